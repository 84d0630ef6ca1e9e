/**
 * Node-RED settings for the enalysis-ingest benchmark peer (headless: no editor, no admin API,
 * no HTTP listener at all). Start with:
 *
 *   node node_modules/node-red/red.js --settings settings.js
 *
 * Environment (the flow reads these through ${VAR} properties and env.get()):
 *   MQTT_HOST (127.0.0.1), MQTT_PORT (1883), MQTT_TOPIC (enalysis/v1/+/+/readings),
 *   MQTT_CLIENT_ID (enalysis-peer-node-red), DATABASE_URL (required, postgres://...),
 *   PG_SINK (copy | postgres-multi; default copy), PG_POOL_MAX (4).
 * Join batching is set in flow.json (1000 messages or 100 ms).
 *
 * Once the MQTT subscription is live, the flow prints one line `ready` on stdout.
 */
const path = require("path");

function setDefault(name, value) {
    if (!process.env[name]) {
        process.env[name] = value;
    }
}
setDefault("MQTT_HOST", "127.0.0.1");
setDefault("MQTT_PORT", "1883");
setDefault("MQTT_TOPIC", "enalysis/v1/+/+/readings");
setDefault("MQTT_CLIENT_ID", "enalysis-peer-node-red");
setDefault("PG_SINK", "copy");
setDefault("PG_POOL_MAX", "4");
if (!process.env.DATABASE_URL) {
    console.error("DATABASE_URL is required (postgres://user[:password]@host:port/db)");
    process.exit(2);
}
// The readiness probe: a topic of this instance alone, outside the readings filter. The flow
// publishes to it once the broker connection is up; when the message comes back, the broker has
// processed every SUBSCRIBE sent before it (packets of one connection are handled in order).
setDefault("NODE_RED_PROBE_TOPIC", `enalysis-peer/node-red/${process.env.MQTT_CLIENT_ID}/ready`);

// node-red-contrib-postgres-multi's config node takes host/port/database fields and a user from
// its credentials; left empty they fall back to node-postgres' PG* variables, set here from
// DATABASE_URL (only used when PG_SINK=postgres-multi).
{
    const u = new URL(process.env.DATABASE_URL);
    setDefault("PGHOST", decodeURIComponent(u.hostname || "127.0.0.1"));
    setDefault("PGPORT", u.port || "5432");
    setDefault("PGDATABASE", decodeURIComponent(u.pathname.replace(/^\//, "")) || "postgres");
    if (u.username) setDefault("PGUSER", decodeURIComponent(u.username));
    if (u.password) setDefault("PGPASSWORD", decodeURIComponent(u.password));
}

module.exports = {
    userDir: __dirname,
    flowFile: path.join(__dirname, "flow.json"),
    flowFilePretty: true,
    // Nothing secret in the flow (the database URL comes from the environment).
    credentialSecret: false,

    // Headless: no editor, no admin API, no HTTP nodes -> Node-RED opens no port.
    httpAdminRoot: false,
    httpNodeRoot: false,
    disableEditor: true,
    uiHost: "127.0.0.1",

    // Modules for function nodes (Node-RED docs, "Writing Functions" → "Loading additional
    // modules": functionGlobalContext). Installed by npm from package.json, never at run time.
    functionGlobalContext: {
        pg: require("pg"),
        pgCopyFrom: require("pg-copy-streams").from,
    },
    functionExternalModules: false,
    externalModules: {
        autoInstall: false,
        palette: { allowInstall: false },
        modules: { allowInstall: false },
    },

    logging: {
        console: {
            level: process.env.NODE_RED_LOG_LEVEL || "info",
            metrics: false,
            audit: false,
        },
    },
    diagnostics: { enabled: false, ui: false },
    telemetry: { enabled: false },
    runtimeState: { enabled: false, ui: false },
    editorTheme: { projects: { enabled: false } },
};
