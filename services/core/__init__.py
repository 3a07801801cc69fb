"""What the server serves, without HTTP: the search queue and the scheduler that runs it, the SQL
trial store and the read models over trials and fronts, device measurements and latency
predictions, API keys, and the database with its migrations."""
