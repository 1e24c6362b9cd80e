"""Record raw readings, convert CSV files to recordings, and replay a flow over a recording."""
