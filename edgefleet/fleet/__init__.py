"""The fleet service: the resource library (models, scripts) and versioned flows (docs/fleet.md).
Metadata in SQLite, blobs in S3, commands over MQTT v5 request/response."""
