"""What calls cost: the price table (prices.toml, or BLOGSTREAM_PRICES_FILE) and the arithmetic on it.

Pure: no database, no network. The pipeline prices each paid call with it
(streams/pipeline/spend.py), and the API and CLI show what was recorded.
"""
