// Node-RED headless for bench/ingest_gateway.py: no editor, no HTTP server, warnings only.
// Run by the bench as: node-red --settings settings.js --userDir TMP TMP/flows.json
module.exports = {
    uiHost: "127.0.0.1",
    uiPort: Number(process.env.EF_BENCH_UI_PORT || 0),
    httpAdminRoot: false,
    httpNodeRoot: false,
    disableEditor: true,
    credentialSecret: false,
    flowFilePretty: true,
    logging: { console: { level: "warn", metrics: false, audit: false } },
    contextStorage: { default: { module: "memory" } },
    externalModules: { autoInstall: false, palette: { allowInstall: false } },
};
