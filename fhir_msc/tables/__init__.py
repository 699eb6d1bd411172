"""Trial tables (SDTM-like CSV) read row by row, written back, and the rejects of bad rows."""
