//! `keygate demo`: the gateway on the shipped config, in front of a built-in
//! echo backend, with a copy of the key store holding two throwaway keys, and
//! curl lines that show an allow and two denials. Nothing in the shipped
//! files changes; the copy is removed on exit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::keys::{KeyTemplate, create_key};
use super::{CliError, ConfigArg, serve};
use crate::config::StoreLocation;
use crate::keys::Access;
use crate::store::{FileStore, Store};

pub fn run(args: &ConfigArg) -> Result<(), CliError> {
    let path = super::config_path(args.config.as_deref());
    let mut config = super::load_config(&path)?;
    let StoreLocation::File(shipped) = &config.keys.store else {
        return Err(CliError::user("keygate demo needs a file key store"));
    };
    let dir = std::env::temp_dir().join(format!("keygate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveOnDrop(dir.clone());
    let store_path = dir.join("keys.toml");
    if shipped.exists() {
        std::fs::copy(shipped, &store_path)?;
    }
    let store = Store::File(FileStore::new(store_path.clone()));
    let now = SystemTime::now();
    let prefix = config.keys.prefix.clone();
    let (_, read_only) = create_key(
        &store,
        &prefix,
        KeyTemplate {
            name: "demo shop frontend".into(),
            access: Access::ReadOnly,
            expires: None,
            origins: vec![],
            rate_limit: None,
        },
        now,
    )?;
    let (_, full) = create_key(
        &store,
        &prefix,
        KeyTemplate {
            name: "demo ERP backend".into(),
            access: Access::FullAccess,
            expires: None,
            origins: vec![],
            rate_limit: None,
        },
        now,
    )?;

    // The console too, with a throwaway admin token.
    let admin_token = crate::keys::token::generate(crate::keys::tokens::TOKEN_PREFIX)
        .map_err(|e| CliError::user(format!("the OS random number generator failed: {e}")))?;
    let tokens = crate::store::TokenFile::new(dir.join("admin.tokens"));
    tokens.modify(|list| {
        list.push(crate::keys::tokens::AdminToken {
            name: "demo".into(),
            role: crate::keys::tokens::Role::Admin,
            hash: crate::keys::KeyHash::of(admin_token.as_bytes()),
            created: now,
        });
        Ok(())
    })?;
    let mut admin = config.admin.clone().unwrap_or(crate::config::AdminConfig {
        listen: None,
        public_url: String::new(),
        docs_url: None,
        tokens: PathBuf::new(),
        session_ttl: std::time::Duration::from_secs(12 * 3600),
        tls: None,
    });
    admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    admin.tokens = dir.join("admin.tokens");
    admin.tls = None;

    let echo = start_echo()?;
    config.upstream.url = format!("http://{echo}")
        .parse()
        .map_err(|e| CliError::user(format!("{e}")))?;
    config.keys.store = StoreLocation::File(store_path);
    let header = config.keys.header.to_string();
    let host = |a: SocketAddr| {
        if a.ip().is_unspecified() {
            format!("localhost:{}", a.port())
        } else {
            a.to_string()
        }
    };
    if admin.public_url.is_empty()
        || config
            .admin
            .as_ref()
            .is_none_or(|a| a.public_url.contains("localhost"))
    {
        admin.public_url = format!("http://{}", host(config.server.listen));
    }
    config.admin = Some(admin);

    serve::serve(config, move |client, ops, console| {
        let host = host(client);
        println!(
            "\nkeygate demo: gateway on http://{host}, echo backend on http://{echo}, metrics on http://{ops}/metrics"
        );
        println!(
            "Two throwaway keys were created in a temporary copy of the store (gone when you stop the demo).\n"
        );
        println!(
            "# allowed: a read-only key may GET (the echo shows the identity headers keygate adds)"
        );
        println!("curl -i -H '{header}: {read_only}' http://{host}/rewards\n");
        println!("# 403 read_only_method: a read-only key may not change anything");
        println!("curl -i -X POST -H '{header}: {read_only}' http://{host}/rewards\n");
        println!("# 403 browser_full_access: a full-access key from a browser (it sends Origin)");
        println!(
            "curl -i -H '{header}: {full}' -H 'Origin: https://shop.example.com' http://{host}/rewards\n"
        );
        println!("# allowed: the same full-access key from a server");
        println!("curl -i -X POST -H 'Authorization: Bearer {full}' http://{host}/rewards\n");
        println!("# 401 missing_key, and the metrics that counted all of the above");
        println!("curl -i http://{host}/rewards");
        println!("curl -s http://{ops}/metrics | grep keygate_decisions_total\n");
        if let Some(console) = console {
            println!(
                "# the console (the \"API Keys\" page): open it and sign in with this throwaway admin token"
            );
            println!("http://{console}/");
            println!("{admin_token}\n");
        }
        println!("Press Ctrl-C to stop.");
    })
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An echo backend on an ephemeral loopback port, on its own thread: it
/// answers every request with a JSON description of what it received.
fn start_echo() -> Result<SocketAddr, CliError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = service_fn(|req: Request<Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(echo(&req))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    Ok(addr)
}

fn echo(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let body = serde_json::json!({ "echo": true, "method": req.method().as_str(), "path": req.uri().to_string(), "headers": headers });
    let mut r = Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
