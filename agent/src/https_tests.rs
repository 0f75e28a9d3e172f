use super::*;
use axum::routing::get;
use std::path::{Path, PathBuf};

const IP: [u8; 4] = [127, 1, 19, 1];

/// A CA and a leaf certificate for `names`, as PEM: (ca, cert, key).
pub(crate) fn test_pki(names: &[&str]) -> (String, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &*ca)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

struct Files {
    ca: PathBuf,
    tls: Tls,
}

fn write_pki(dir: &Path, names: &[&str]) -> Files {
    let (ca, cert, key) = test_pki(names);
    let files = Files {
        ca: dir.join("ca.pem"),
        tls: Tls {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        },
    };
    std::fs::write(&files.ca, ca).unwrap();
    std::fs::write(&files.tls.cert, cert).unwrap();
    std::fs::write(&files.tls.key, key).unwrap();
    files
}

fn client(trust: &ClientTrust) -> reqwest::Client {
    trust
        .apply(reqwest::Client::builder().no_proxy())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test]
async fn serves_https_past_a_silent_client_and_drains() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_pki(dir.path(), &["127.1.19.1"]);
    let config = server_config(&files.tls).unwrap();
    assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
    let listener = TcpListener::bind(SocketAddr::from((IP, 0))).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/healthz", get(|| async { "ok" }));
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(listener, app, Some(config), shutdown.clone()));

    // Connects and never says a word: must not hold up anyone else.
    let _silent = TcpStream::connect(addr).await.unwrap();

    let trusted = ClientTrust::load(
        Some(&TlsTrust {
            ca: Some(files.ca.clone()),
            insecure: false,
        }),
        TrustField::SERVER,
    )
    .unwrap();
    let url = format!("https://{addr}/healthz");
    let r = client(&trusted).get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");

    // The built-in roots do not know the test CA.
    let e = client(&ClientTrust::default())
        .get(&url)
        .send()
        .await
        .unwrap_err();
    assert!(e.is_connect(), "{e:?}");
    // Plain HTTP gets no answer from a TLS port.
    assert!(client(&trusted)
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .is_err());
    // GoFD's way: no verification at all.
    let insecure = ClientTrust::load(
        Some(&TlsTrust {
            ca: None,
            insecure: true,
        }),
        TrustField::SERVER,
    )
    .unwrap();
    assert!(insecure.is_insecure());
    let r = client(&insecure).get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("drains despite the silent client")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_pki(dir.path(), &["127.1.19.99"]);
    let listener = TcpListener::bind(SocketAddr::from((IP, 0))).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let app = Router::new().route("/healthz", get(|| async { "ok" }));
    let server = tokio::spawn(serve(
        listener,
        app,
        Some(server_config(&files.tls).unwrap()),
        shutdown.clone(),
    ));
    let trusted = ClientTrust::load(
        Some(&TlsTrust {
            ca: Some(files.ca),
            insecure: false,
        }),
        TrustField::AGENTS,
    )
    .unwrap();
    let e = client(&trusted)
        .get(format!("https://{addr}/healthz"))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_connect(), "{e:?}");
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

#[test]
fn a_key_that_does_not_match_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_pki(dir.path(), &["127.1.19.1"]);
    let other = tempfile::tempdir().unwrap();
    let other = write_pki(other.path(), &["127.1.19.1"]);
    let mixed = Tls {
        cert: files.tls.cert,
        key: other.tls.key,
    };
    let e = server_config(&mixed).unwrap_err();
    assert!(matches!(e, TlsError::Certificate(_)), "{e}");
    assert!(e.to_string().starts_with("net.tls"), "{e}");
}

#[test]
fn a_ca_file_without_a_certificate_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_pki(dir.path(), &["127.1.19.1"]);
    let e = ClientTrust::load(
        Some(&TlsTrust {
            ca: Some(files.tls.key),
            insecure: false,
        }),
        TrustField::AGENTS,
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("net.agentTls.ca"), "{e}");
}
