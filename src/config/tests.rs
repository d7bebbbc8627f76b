use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("/etc/keygate"), &no_env)
}

fn err(text: &str) -> String {
    parse(text)
        .err()
        .map(|e| e.0)
        .unwrap_or_else(|| panic!("expected an error for:\n{text}"))
}

const MINIMAL: &str = "[upstream]\nurl = \"http://127.0.0.1:3000\"\n";

#[test]
fn minimal_config_gets_spec_defaults() {
    let c = parse(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.server.listen,
        "0.0.0.0:8080".parse().unwrap_or_else(|e| panic!("{e}"))
    );
    assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.server.max_header_bytes, 32768);
    assert_eq!(c.server.max_headers, 100);
    assert_eq!(c.server.max_connections, 10_000);
    assert_eq!(c.server.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(2));
    assert_eq!(c.upstream.response_timeout, Duration::from_secs(30));
    assert_eq!(c.upstream.read_timeout, Duration::from_secs(30));
    assert_eq!(
        c.keys.store,
        StoreLocation::File(PathBuf::from("/etc/keygate/keys.toml"))
    );
    assert_eq!(c.keys.header, "x-api-key");
    assert_eq!(c.keys.prefix, "kg");
    assert_eq!(c.keys.query_param, None);
    assert!(!c.keys.forward_key);
    assert_eq!(c.policy.browser_full_access, BrowserFullAccess::Deny);
    assert!(c.cors.is_none());
    assert_eq!(
        c.metrics.listen,
        "127.0.0.1:9090".parse().unwrap_or_else(|e| panic!("{e}"))
    );
}

#[test]
fn shipped_config_is_valid() {
    let text = include_str!("../../config/keygate.toml");
    let c = parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.keys.store,
        StoreLocation::File(PathBuf::from("/etc/keygate/keys.toml"))
    );
}

#[test]
fn misspelt_option_is_named_with_its_line() {
    let e = err(
        "[server]\nlisten = \"127.0.0.1:1\"\nidle_timeuot = \"5s\"\n[upstream]\nurl = \"http://a\"\n",
    );
    assert!(e.starts_with("3: unknown field `idle_timeuot`"), "{e}");
    assert!(e.ends_with("(in `idle_timeuot`)"), "{e}");
}

#[test]
fn duration_without_unit_is_refused_at_its_line() {
    let e = err("[upstream]\nurl = \"http://a\"\nconnect_timeout = \"2\"\n");
    assert!(e.starts_with("3: duration \"2\" needs a unit"), "{e}");
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let c = parse("[server.tls]\ncert = \"tls/c.pem\"\nkey = \"/abs/k.pem\"\n[upstream]\nurl = \"http://a\"\n[keys]\nstore = \"data/k.toml\"\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let tls = c.server.tls.unwrap_or_else(|| panic!("tls"));
    assert_eq!(tls.cert, PathBuf::from("/etc/keygate/tls/c.pem"));
    assert_eq!(tls.key, PathBuf::from("/abs/k.pem"));
    assert_eq!(
        c.keys.store,
        StoreLocation::File(PathBuf::from("/etc/keygate/data/k.toml"))
    );
}

#[test]
fn upstream_must_be_an_http_url_without_path() {
    assert!(err("[upstream]\nurl = \"ftp://a\"\n").contains("http:// or https://"));
    assert!(err("[upstream]\nurl = \"http://a/api\"\n").contains("must not have a path"));
    assert!(err("[server]\n").contains("[upstream] is missing"));
}

#[test]
fn store_env_reads_the_named_variable() {
    let text = format!("{MINIMAL}[keys]\nstore_env = \"KG_DB\"\n");
    let env = |n: &str| (n == "KG_DB").then(|| "postgres://u@h/db".to_string());
    let c = Config::from_toml(&text, Path::new("/"), &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.keys.store,
        StoreLocation::Postgres("postgres://u@h/db".into())
    );
    assert!(err(&text).contains("$KG_DB, which is not set"));
}

#[test]
fn bad_values_are_refused_with_the_field_name() {
    assert!(err(&format!("{MINIMAL}[keys]\nprefix = \"k_g\"\n")).contains("keys.prefix"));
    assert!(err(&format!("{MINIMAL}[keys]\nheader = \"bad header\"\n")).contains("keys.header"));
    assert!(
        err(&format!(
            "{MINIMAL}[policy]\nbrowser_full_access = \"allow\"\n"
        ))
        .contains("unknown variant")
    );
    assert!(
        err(&format!("{MINIMAL}[cors]\nallowed_origins = [\"shop\"]\n"))
            .contains("cors.allowed_origins")
    );
    assert!(err(&format!("[server]\nworkers = 0\n{MINIMAL}")).contains("server.workers"));
    assert!(err(&format!("[server]\nlisten = \"nowhere\"\n{MINIMAL}")).starts_with("2:"));
}

#[test]
fn errors_never_echo_a_value_that_may_be_secret() {
    // Each error is on line 4, the line that holds the password.
    for line in [
        "store = [\"postgres://u:hunter2@db/k\"]",
        "store = \"postgres://u:hunter2@db/k\" trailing",
        "store = \"postgres://u:hunter2@db/k",
        "store = \"postgres://u:hunter2@db/k?sslmode=nope\"",
        "store = \"postgres://u:hunter2@\"",
        "stor = \"postgres://u:hunter2@db/k\"",
    ] {
        let e = err(&format!("[upstream]\nurl = \"http://a\"\n[keys]\n{line}\n"));
        assert!(!e.contains("hunter2"), "{line}: {e}");
        assert!(
            e.starts_with("4:") || e.contains("keys.store"),
            "{line}: the error is not about line 4: {e}"
        );
    }
}

#[test]
fn postgres_options_are_checked() {
    let pg = format!("{MINIMAL}[keys]\nstore = \"postgres://u@db/k\"\n");
    let c = parse(&format!(
        "{pg}snapshot = \"snap/keys.toml\"\nresync_interval = \"2s\"\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.keys.snapshot.as_deref(),
        Some(Path::new("/etc/keygate/snap/keys.toml"))
    );
    assert_eq!(c.keys.resync_interval, Duration::from_secs(2));
    assert_eq!(c.keys.snapshot_max_age, Duration::from_secs(24 * 3600));
    assert!(err(&format!("{MINIMAL}[keys]\nsnapshot = \"s.toml\"\n")).contains("keys.snapshot"));
    assert!(err(&format!("{pg}resync_interval = \"10ms\"\n")).contains("at least 100ms"));
    let e = err(&format!(
        "{MINIMAL}[keys]\nstore = \"postgres://u:hunter2@db/k?sslmode=nope\"\n"
    ));
    assert!(e.contains("keys.store") && !e.contains("hunter2"), "{e}");
}

#[test]
fn read_timeout_defaults_to_response_timeout_and_zero_timeouts_are_refused() {
    let with = |extra: &str| format!("[upstream]\nurl = \"http://127.0.0.1:3000\"\n{extra}\n");
    let c = parse(&with("response_timeout = \"5s\"")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.upstream.read_timeout, Duration::from_secs(5));
    let c = parse(&with("response_timeout = \"5s\"\nread_timeout = \"10m\""))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.upstream.read_timeout, Duration::from_secs(600));
    assert!(err(&with("response_timeout = \"0s\"")).contains("upstream.response_timeout"));
    assert!(err(&with("read_timeout = \"0s\"")).contains("upstream.read_timeout"));
}

#[test]
fn per_key_metrics_are_off_unless_asked_for() {
    assert!(
        !parse(MINIMAL)
            .unwrap_or_else(|e| panic!("{e}"))
            .metrics
            .per_key
    );
    let on =
        parse(&format!("{MINIMAL}[metrics]\nper_key = true\n")).unwrap_or_else(|e| panic!("{e}"));
    assert!(on.metrics.per_key);
    assert!(err(&format!("{MINIMAL}[metrics]\nper_key = \"yes\"\n")).contains("per_key"));
}

#[test]
fn limits_parse_with_defaults_and_name_their_mistakes() {
    let c = parse(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.limits.read_only.is_none() && c.limits.shared.is_none());
    assert_eq!(c.limits.max_clients, 100_000);
    assert!(c.server.trusted_proxies.is_empty());
    let text = format!(
        "{MINIMAL}[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n[limits]\nread_only = \"100/min\"\nfull_access = \"50/s\"\nread_only_per_client = \"10/s\"\nshared = \"redis://:pw@127.0.0.1:6379/1\"\nshared_prefix = \"kg:test\"\n"
    );
    let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.limits.read_only.map(|l| l.to_string()),
        Some("100/min".into())
    );
    assert_eq!(
        c.limits.full_access.map(|l| l.to_string()),
        Some("50/s".into())
    );
    assert_eq!(
        c.limits.read_only_per_client.map(|l| l.to_string()),
        Some("10/s".into())
    );
    let shared = c.limits.shared.unwrap_or_else(|| panic!("shared"));
    assert_eq!(shared.redis.db, 1);
    assert_eq!(shared.prefix, "kg:test");
    assert_eq!(shared.sync_interval, Duration::from_millis(50));
    assert_eq!(c.server.trusted_proxies.len(), 2);

    let e = err(&format!(
        "{MINIMAL}[limits]\n\nread_only = \"100 a minute\"\n"
    ));
    assert!(e.starts_with("5: ") && e.contains("N/s"), "{e}");
    let e = err(&format!("{MINIMAL}[limits]\nsync_interval = \"1s\"\n"));
    assert!(e.contains("limits.sync_interval"), "{e}");
    let e = err(&format!(
        "{MINIMAL}[limits]\nshared = \"redis://:hunter2@\"\n"
    ));
    assert!(e.contains("limits.shared") && !e.contains("hunter2"), "{e}");
    let e = err(&format!("{MINIMAL}[limits]\nshared_env = \"KG_NOPE\"\n"));
    assert!(e.contains("$KG_NOPE"), "{e}");
    let e = err(&format!(
        "{MINIMAL}[server]\ntrusted_proxies = [\"10.0.0.1/8\"]\n"
    ));
    assert!(
        e.contains("server.trusted_proxies") && e.contains("host bits"),
        "{e}"
    );
    let e = err(&format!("{MINIMAL}[limits]\nshared_prefix = \"a b\"\n"));
    assert!(e.contains("limits.shared_prefix"), "{e}");
}
