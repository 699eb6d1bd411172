"""The study definition (mappings/*.yaml): arms, visits, outcomes, codes, analysis plan."""
