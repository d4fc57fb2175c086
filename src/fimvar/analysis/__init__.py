"""The analyses: one streaming driver (driver.py) and one mode per kind of result, with the
accumulator, checkpoints, input checks and parameter groups they share."""
