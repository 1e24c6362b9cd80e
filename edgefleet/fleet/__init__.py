"""The fleet service: the resource library (models, scripts) and versioned flows (DESIGN.md,
"Control plane"). Metadata in SQLite, blobs in S3, commands over MQTT v5 request/response."""
