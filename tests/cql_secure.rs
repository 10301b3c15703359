//! The CQL store in production shape against the second, secured Cassandra
//! of `make test` (`scripts/cassandra-local.sh start --secure`:
//! PasswordAuthenticator, CassandraAuthorizer, client TLS from a local CA):
//! password authentication, TLS verified against the CA (and refused with
//! another CA), an optional client certificate, DC-aware load balancing
//! (`store.cql.local_dc`), each through the real `outboxd` binary with
//! `OUTBOX_STORE__CQL__*` variables, and clear one-line errors that never
//! contain the password.

mod harness;

use harness::config_check::outboxd;
use harness::cql::cql_env;
use std::path::{Path, PathBuf};

struct Secure {
    uri: String,
    ca: PathBuf,
    user: String,
    password: String,
    client: Option<(PathBuf, PathBuf)>,
}

fn secure() -> Option<Secure> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let Some(uri) = var("CASSANDRA_SECURE_URI") else {
        crate::harness::skipped(true, "needs the secured Cassandra of `make test` (scripts/cassandra-local.sh start --secure exports CASSANDRA_SECURE_URI)");
        return None;
    };
    Some(Secure {
        uri,
        ca: PathBuf::from(var("CASSANDRA_SECURE_CA").expect("CASSANDRA_SECURE_CA with CASSANDRA_SECURE_URI")),
        user: var("CASSANDRA_SECURE_USER").unwrap_or_else(|| "cassandra".into()),
        password: var("CASSANDRA_SECURE_PASSWORD").unwrap_or_else(|| "cassandra".into()),
        client: var("CASSANDRA_SECURE_CLIENT_CERT")
            .zip(var("CASSANDRA_SECURE_CLIENT_KEY"))
            .map(|(c, k)| (c.into(), k.into())),
    })
}

fn keyspace() -> String {
    format!("secure_{}", uuid::Uuid::now_v7().simple())
}

/// The environment for one run: CQL backend on the secure node.
fn env(s: &Secure, ks: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut e: Vec<(String, String)> = cql_env(&s.uri, ks).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    e.push(("OUTBOX_STORE__CQL__REQUEST_TIMEOUT_MS".into(), "20000".into()));
    e.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    e
}

/// `env` signed in as the secure node's user with `password`, over TLS
/// trusting `ca_file`, plus `extra`.
fn signed_in(s: &Secure, ks: &str, password: &str, ca_file: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut e = env(
        s,
        ks,
        &[
            ("OUTBOX_STORE__CQL__USERNAME", &s.user),
            ("OUTBOX_STORE__CQL__PASSWORD", password),
            ("OUTBOX_STORE__CQL__TLS__CA_FILE", ca_file),
        ],
    );
    e.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    e
}

fn run(args: &[&str], env: &[(String, String)]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = outboxd(args, env, dir.path());
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ca(s: &Secure) -> String {
    s.ca.display().to_string()
}

#[test]
fn password_and_tls_with_the_ca_work_end_to_end() {
    let Some(s) = secure() else { return };
    let ks = keyspace();
    let e = signed_in(&s, &ks, &s.password, &ca(&s), &[("OUTBOX_STORE__CQL__LOCAL_DC", "datacenter1")]);
    let (code, out, err) = run(&["schema"], &e);
    assert_eq!(code, Some(0), "schema over TLS with a password: {out}{err}");
    // A write and a read through the same secured session.
    let (code, id, err) = run(&["customer", "register", "--name", "Ada", "--email", "ada@example.com"], &e);
    assert_eq!(code, Some(0), "{err}");
    let (code, shown, err) = run(&["customer", "show", id.trim()], &e);
    assert_eq!(code, Some(0), "{err}");
    assert!(shown.contains("ada@example.com"), "{shown}");
    assert!(!err.contains(&s.password) || s.password.len() < 4, "password in stderr");
}

#[test]
fn a_client_certificate_is_presented_when_configured() {
    let Some(s) = secure() else { return };
    let Some((cert, key)) = &s.client else {
        crate::harness::skipped(
            true,
            "the secure node has no client certificate (cassandra-local.sh makes one when openssl is on PATH)",
        );
        return;
    };
    let e = signed_in(
        &s,
        &keyspace(),
        &s.password,
        &ca(&s),
        &[
            ("OUTBOX_STORE__CQL__TLS__CERT_FILE", &cert.display().to_string()),
            ("OUTBOX_STORE__CQL__TLS__KEY_FILE", &key.display().to_string()),
        ],
    );
    let (code, out, err) = run(&["schema"], &e);
    assert_eq!(code, Some(0), "{out}{err}");
}

#[test]
fn a_wrong_password_is_a_clear_error_without_the_password() {
    let Some(s) = secure() else { return };
    let wrong = format!("wrong-{}", uuid::Uuid::now_v7().simple());
    let e = signed_in(&s, &keyspace(), &wrong, &ca(&s), &[]);
    let (code, out, err) = run(&["schema"], &e);
    assert_eq!(code, Some(1), "an unavailable store exits 1: {err}");
    assert!(
        err.to_lowercase().contains("authentication") || err.to_lowercase().contains("credentials"),
        "says why: {err}"
    );
    assert!(err.contains("store.cql.username") || err.contains(&s.user), "names the user or key: {err}");
    for text in [&out, &err] {
        assert!(!text.contains(&wrong), "the password leaked: {text}");
    }
    assert!(err.lines().filter(|l| l.starts_with("error:")).count() == 1, "one error line: {err}");
}

#[test]
fn no_credentials_on_an_authenticating_server_is_a_clear_error() {
    let Some(s) = secure() else { return };
    let e = env(&s, &keyspace(), &[("OUTBOX_STORE__CQL__TLS__CA_FILE", &ca(&s))]);
    let (code, _, err) = run(&["schema"], &e);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("store.cql.username"), "tells which keys to set: {err}");
}

#[test]
fn tls_with_another_ca_is_refused() {
    let Some(s) = secure() else { return };
    // A CA that did not sign the node's certificate: the public CA bundle
    // is not at hand, so use the client certificate (a leaf, not the CA).
    let other = tempfile::tempdir().unwrap();
    let other_ca = other.path().join("other-ca.pem");
    make_other_ca(&other_ca);
    let e = signed_in(&s, &keyspace(), &s.password, &other_ca.display().to_string(), &[]);
    let (code, _, err) = run(&["schema"], &e);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "says it is the certificate: {err}");
}

fn make_other_ca(path: &Path) {
    let dir = path.parent().unwrap();
    let store = dir.join("other.p12");
    let st = std::process::Command::new("keytool")
        .args([
            "-noprompt",
            "-genkeypair",
            "-alias",
            "ca",
            "-keyalg",
            "RSA",
            "-keysize",
            "2048",
            "-validity",
            "2",
            "-dname",
            "CN=another CA",
            "-ext",
            "bc:c",
        ])
        .args(["-storetype", "PKCS12", "-keystore", &store.display().to_string(), "-storepass", "changeit"])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let st = std::process::Command::new("keytool")
        .args([
            "-noprompt",
            "-exportcert",
            "-rfc",
            "-alias",
            "ca",
            "-storetype",
            "PKCS12",
            "-keystore",
            &store.display().to_string(),
            "-storepass",
            "changeit",
            "-file",
            &path.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
}

#[test]
fn an_unknown_local_dc_is_refused_naming_the_known_ones() {
    let Some(s) = secure() else { return };
    let e =
        signed_in(&s, &keyspace(), &s.password, &ca(&s), &[("OUTBOX_STORE__CQL__LOCAL_DC", "dc-that-does-not-exist")]);
    let (code, _, err) = run(&["schema"], &e);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("dc-that-does-not-exist") && err.contains("datacenter1"), "{err}");
}

/// `verify_hostname`: the node's certificate names 127.0.0.1 and localhost.
/// Checked through the same verifier a connection uses, for an address the
/// certificate does not list (no second server needed).
#[test]
fn verify_hostname_checks_the_name_and_false_still_checks_the_chain() {
    let Some(s) = secure() else { return };
    let node = s.ca.parent().unwrap().join("node.pem");
    let tls = outboxd::config::CqlTls { ca_file: s.ca.clone(), cert_file: None, key_file: None, verify_hostname: true };
    use outboxd::store::cql::security::verify_for;
    verify_for(&tls, &node, "127.0.0.1").expect("the node's own address");
    let e = verify_for(&tls, &node, "10.9.9.9").unwrap_err().to_string();
    assert!(e.to_lowercase().contains("name") || e.contains("NotValidFor"), "{e}");
    let lax = outboxd::config::CqlTls { verify_hostname: false, ..tls.clone() };
    verify_for(&lax, &node, "10.9.9.9").expect("verify_hostname = false skips only the name");
    // ... but never the chain: a CA that did not sign it is refused either way.
    let other = tempfile::tempdir().unwrap();
    let other_ca = other.path().join("other-ca.pem");
    make_other_ca(&other_ca);
    let foreign = outboxd::config::CqlTls { ca_file: other_ca, ..lax };
    assert!(verify_for(&foreign, &node, "127.0.0.1").is_err());
}
