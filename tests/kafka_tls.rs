//! Kafka over TLS and SASL_SSL, against a real broker started with
//! `KAFKA_TLS=1 scripts/kafka-local.sh start` (a CA made for it, the
//! broker's certificate for 127.0.0.1 signed by that CA, a SCRAM-SHA-512
//! user):
//! - the relay publishes through the TLS listener with `kafka.extra`
//!   `"security.protocol" = "ssl"` and `"ssl.ca.location"` = the CA file,
//!   and through the SASL_SSL listener with the SCRAM user; every stored
//!   event is on the topic (read on the plain listener);
//! - a daemon that does not trust the broker's CA, or has a wrong password,
//!   publishes nothing, and /health and the log say why (never the password);
//! - a CA file that does not exist, or an OIDC config without its token
//!   endpoint, is refused at load (exit 2, one line naming the setting);
//! - OAuth/OIDC: a token from an HTTPS token endpoint (client credentials,
//!   or a JWT-bearer assertion signed with a passphrase-protected key) that
//!   the broker validates; a wrong client secret, an assertion signed by
//!   another key or a forged token publishes nothing.

mod harness;

use base64::Engine as _;
use harness::config_check::outboxd;
use harness::*;
use std::path::Path;
use std::time::Duration;
use uuid::Uuid;

/// A config file with `[kafka.extra]` = `extra`, as an operator writes it.
fn extra_config(dir: &Path, extra: &[(&str, String)]) -> std::path::PathBuf {
    let mut text = "[kafka.extra]\n".to_string();
    for (k, v) in extra {
        text.push_str(&format!("{k:?} = {v:?}\n"));
    }
    let file = dir.join("outboxd.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// A daemon on `brokers` with `extra`; it places and confirms `orders` orders.
fn daemon_with(brokers: &str, extra: &[(&str, String)], orders: usize) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = extra_config(dir.path(), extra);
    let cfg = daemon_config(brokers, dir.path());
    let d = Daemon::start(&cfg, &[("OUTBOX_CONFIG", file.display().to_string())]);
    let customer = Uuid::now_v7();
    for i in 0..orders {
        let id = create_order(&d, customer, &format!("TLS-{i}"));
        assert_eq!(d.post(&format!("/orders/{id}/confirm"), &serde_json::json!({})).status, 200);
    }
    (d, dir)
}

/// /health once its Kafka component's detail contains `cause`; nothing was
/// delivered.
fn refused_with(d: &Daemon, cause: &str) {
    let h = eventually(Duration::from_secs(30), &format!("/health to say {cause:?}"), || {
        let (_, h) = d.health();
        component(&h, "kafka").1.contains(cause).then_some(h)
    });
    assert_eq!((h["status"].as_str(), component(&h, "kafka").0.as_str()), (Some("degraded"), "degraded"), "{h}");
    assert_eq!(h["relay"]["delivered"].as_u64(), Some(0), "{h}");
    assert!(h["relay"]["checkpoint"].as_i64().unwrap_or(0) == 0, "nothing confirmed: {h}");
}

#[test]
fn the_relay_publishes_over_tls_and_sasl_and_nothing_to_a_broker_it_cannot_trust_or_log_in_to() {
    if harness::shared_brokers().is_none() {
        return; // prints SKIPPED with the reason
    }
    let kafka = PrivateKafka::start_tls();
    let tls = kafka.tls.clone().expect("KAFKA_TLS=1 start prints the TLS listeners and the CA");
    let ca = tls.ca.display().to_string();
    let ssl = [("security.protocol", "ssl".to_string()), ("ssl.ca.location", ca.clone())];
    let sasl = |password: &str| {
        [
            ("security.protocol", "sasl_ssl".to_string()),
            ("ssl.ca.location", ca.clone()),
            ("sasl.mechanism", "SCRAM-SHA-512".to_string()),
            ("sasl.username", tls.sasl_user.clone()),
            ("sasl.password", password.to_string()),
        ]
    };

    // Trusting the CA (and, on SASL_SSL, logged in): every event reaches the topic.
    for (brokers, extra) in [(&tls.brokers, ssl.to_vec()), (&tls.sasl_brokers, sasl(&tls.sasl_password).to_vec())] {
        let (d, _dir) = daemon_with(brokers, &extra, 5);
        assert_eq!(caught_up(&d), 10);
        assert_all_on_topic(&kafka.brokers, &d);
        d.stop();
    }

    // Not trusting it (the system's CAs only): the handshake fails.
    let (d, _dir) = daemon_with(&tls.brokers, &[("security.protocol", "ssl".to_string())], 1);
    refused_with(&d, "certificate verify failed");
    assert!(d.log_text().contains("certificate verify failed"));
    d.stop();

    // A wrong password: authentication fails, and the password is never shown.
    let wrong = format!("wrong-{}", Uuid::now_v7().simple());
    let (d, _dir) = daemon_with(&tls.sasl_brokers, &sasl(&wrong), 1);
    refused_with(&d, "Authentication failed");
    let (_, h) = d.health();
    let shown = format!("{h}{}{}", d.metrics().text, d.log_text());
    assert!(!shown.contains(&wrong) && !shown.contains(&tls.sasl_password), "a password was shown");
    d.stop();
}

/// A private TLS broker that takes OAUTHBEARER, its listeners and a token
/// it accepts; None (SKIPPED printed) without a broker to run tests against.
fn oauth_broker() -> Option<(PrivateKafka, TlsListeners, String)> {
    harness::shared_brokers()?;
    let kafka = PrivateKafka::start_tls();
    let tls = kafka.tls.clone().expect("KAFKA_TLS=1 start prints the TLS listeners and the CA");
    let token = std::fs::read_to_string(&tls.oauth_token).unwrap().trim().to_string();
    Some((kafka, tls, token))
}

/// The OIDC settings both grants share: SASL_SSL trusting `ca`, OAUTHBEARER
/// with `sasl.oauthbearer.method = "oidc"`, the token endpoint at `url`
/// (HTTPS, trusted with the same CA).
fn oidc_settings(ca: &str, url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("security.protocol", "sasl_ssl".to_string()),
        ("ssl.ca.location", ca.to_string()),
        ("sasl.mechanism", "OAUTHBEARER".to_string()),
        ("sasl.oauthbearer.method", "oidc".to_string()),
        ("sasl.oauthbearer.token.endpoint.url", url.to_string()),
        ("https.ca.location", ca.to_string()),
    ]
}

/// SASL/OAUTHBEARER with OIDC (`sasl.oauthbearer.method = "oidc"`): the
/// relay takes a token from the token endpoint over HTTPS (trusting it with
/// `https.ca.location`) with its client id and secret, and the broker
/// accepts it (a JWT signed by the key of the broker's JWKS, audience and
/// issuer checked): every event is on the topic. A wrong client secret gets
/// no token: nothing is published, /health says why, and the secret is never
/// shown.
#[test]
fn the_relay_logs_in_with_an_oidc_token_and_publishes_nothing_without_one() {
    let Some((kafka, tls, token)) = oauth_broker() else { return };
    let secret = format!("s3cret-{}", Uuid::now_v7().simple());
    let endpoint = harness::oauth::TokenEndpoint::start(tls.ca.parent().unwrap(), "outboxd-relay", &secret, token);
    let ca = tls.ca.display().to_string();
    let oidc = |secret: &str, url: &str| {
        let mut extra = oidc_settings(&ca, url);
        extra.extend([
            ("sasl.oauthbearer.client.id", "outboxd-relay".to_string()),
            ("sasl.oauthbearer.client.secret", secret.to_string()),
            ("sasl.oauthbearer.scope", "kafka".to_string()),
        ]);
        extra
    };

    let (d, _dir) = daemon_with(&tls.sasl_brokers, &oidc(&secret, &endpoint.url), 5);
    assert_eq!(caught_up(&d), 10);
    assert_all_on_topic(&kafka.brokers, &d);
    d.stop();
    assert!(endpoint.statuses().contains(&200), "the token came from the endpoint: {:?}", endpoint.statuses());
    let asked = endpoint.answered.lock().unwrap().clone();
    assert!(asked.iter().all(|(_, body)| body.contains("scope=kafka")), "{asked:?}");

    let wrong = format!("wrong-{}", Uuid::now_v7().simple());
    let before = endpoint.statuses().len();
    let (d, _dir) = daemon_with(&tls.sasl_brokers, &oidc(&wrong, &endpoint.url), 1);
    refused_with(&d, "Failed to acquire SASL OAUTHBEARER token");
    assert!(component(&d.health().1, "kafka").1.contains("invalid_client"), "the endpoint's answer is shown");
    assert!(endpoint.statuses()[before..].iter().all(|s| *s == 401), "{:?}", endpoint.statuses());
    let (_, h) = d.health();
    let shown = format!("{h}{}{}", d.metrics().text, d.log_text());
    assert!(!shown.contains(&wrong) && !shown.contains(&secret), "a client secret was shown");
    d.stop();

    // A token whose claims were changed after signing (another subject, the
    // signature kept): the broker checks it against its JWKS and refuses it.
    let forged = {
        let token = std::fs::read_to_string(&tls.oauth_token).unwrap();
        let parts: Vec<&str> = token.trim().split('.').collect();
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
        let claims = String::from_utf8(claims).unwrap().replace("\"sub\":\"outboxd\"", "\"sub\":\"intruder\"");
        assert!(claims.contains("intruder"), "{claims}");
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims);
        format!("{}.{claims}.{}", parts[0], parts[2])
    };
    let forger = harness::oauth::TokenEndpoint::start(tls.ca.parent().unwrap(), "outboxd-relay", &secret, forged);
    let (d, _dir) = daemon_with(&tls.sasl_brokers, &oidc(&secret, &forger.url), 1);
    refused_with(&d, "invalid_token");
    assert!(forger.statuses().contains(&200), "the forged token was handed out: {:?}", forger.statuses());
    d.stop();
}

/// Runs `openssl` with `args` (installed by `make test`, as the script's
/// TLS mode needs it).
fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl").args(args).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The JWT-bearer grant (RFC 7523; `sasl.oauthbearer.grant.type =
/// "urn:ietf:params:oauth:grant-type:jwt-bearer"`): librdkafka signs an
/// assertion with the relay's private key (here encrypted, opened with
/// `sasl.oauthbearer.assertion.private.key.passphrase`), the token endpoint
/// checks it against the relay's public key and hands out the token the
/// broker accepts: every event is on the topic, and the passphrase is never
/// shown. An assertion signed by another key gets no token (400
/// `invalid_grant`): nothing is published and /health says why.
#[test]
fn the_relay_logs_in_with_a_jwt_bearer_assertion_and_publishes_nothing_signed_by_another_key() {
    let Some((kafka, tls, token)) = oauth_broker() else { return };
    let keys = tempfile::tempdir().unwrap();
    let path = |name: &str| keys.path().join(name).display().to_string();
    let passphrase = format!("phrase-{}", Uuid::now_v7().simple());
    let pass = format!("pass:{passphrase}");
    let rsa = ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
    openssl(&[&rsa[..], &["-aes-256-cbc", "-pass", &pass, "-out", &path("relay-key.pem")]].concat());
    openssl(&[&rsa[..], &["-out", &path("other-key.pem")]].concat());
    let public = path("relay-public.der");
    openssl(&[
        "rsa",
        "-in",
        &path("relay-key.pem"),
        "-passin",
        &pass,
        "-RSAPublicKey_out",
        "-outform",
        "DER",
        "-out",
        &public,
    ]);
    let endpoint = harness::oauth::TokenEndpoint::start_jwt_bearer(
        tls.ca.parent().unwrap(),
        "outboxd-relay",
        std::fs::read(&public).unwrap(),
        token,
    );
    let ca = tls.ca.display().to_string();
    let jwt_bearer = |key: &str, passphrase: Option<&str>| {
        let mut extra = oidc_settings(&ca, &endpoint.url);
        extra.extend([
            ("sasl.oauthbearer.grant.type", "urn:ietf:params:oauth:grant-type:jwt-bearer".to_string()),
            ("sasl.oauthbearer.assertion.private.key.file", key.to_string()),
            ("sasl.oauthbearer.assertion.claim.iss", "outboxd-relay".to_string()),
            ("sasl.oauthbearer.assertion.claim.sub", "outboxd-relay".to_string()),
            ("sasl.oauthbearer.assertion.claim.aud", endpoint.url.clone()),
        ]);
        extra.extend(passphrase.map(|p| ("sasl.oauthbearer.assertion.private.key.passphrase", p.to_string())));
        extra
    };

    let (d, _dir) = daemon_with(&tls.sasl_brokers, &jwt_bearer(&path("relay-key.pem"), Some(&passphrase)), 5);
    assert_eq!(caught_up(&d), 10);
    assert_all_on_topic(&kafka.brokers, &d);
    let (_, h) = d.health();
    let shown = format!("{h}{}{}", d.metrics().text, d.log_text());
    assert!(!shown.contains(&passphrase), "the key's passphrase was shown");
    d.stop();
    let asked = endpoint.answered.lock().unwrap().clone();
    assert!(asked.iter().any(|(status, _)| *status == 200), "the token came from the endpoint: {asked:?}");
    assert!(asked.iter().all(|(_, body)| body.contains("grant-type:jwt-bearer&assertion=")), "{asked:?}");

    let before = endpoint.statuses().len();
    let (d, _dir) = daemon_with(&tls.sasl_brokers, &jwt_bearer(&path("other-key.pem"), None), 1);
    refused_with(&d, "Failed to acquire SASL OAUTHBEARER token");
    assert!(component(&d.health().1, "kafka").1.contains("invalid_grant"), "the endpoint's answer is shown");
    assert!(endpoint.statuses()[before..].iter().all(|s| *s == 400), "{:?}", endpoint.statuses());
    d.stop();
}

#[test]
fn a_ca_file_that_does_not_exist_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-ca.pem").display().to_string();
    let file =
        extra_config(dir.path(), &[("security.protocol", "ssl".to_string()), ("ssl.ca.location", missing.clone())]);
    let out = outboxd(&["config"], &[("OUTBOX_CONFIG".into(), file.display().to_string())], dir.path());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("kafka.extra.\"ssl.ca.location\"") && err.contains(&missing), "{err}");
}

#[test]
fn an_oidc_config_without_its_token_endpoint_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let secret = format!("s3cret-{}", Uuid::now_v7().simple());
    let file = extra_config(
        dir.path(),
        &[
            ("security.protocol", "sasl_ssl".to_string()),
            ("sasl.mechanism", "OAUTHBEARER".to_string()),
            ("sasl.oauthbearer.method", "oidc".to_string()),
            ("sasl.oauthbearer.client.id", "outboxd-relay".to_string()),
            ("sasl.oauthbearer.client.secret", secret.clone()),
        ],
    );
    let out = outboxd(&["config"], &[("OUTBOX_CONFIG".into(), file.display().to_string())], dir.path());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("sasl.oauthbearer.token.endpoint.url") && err.contains("mandatory"), "{err}");
    assert!(!err.contains(&secret), "{err}");
}
