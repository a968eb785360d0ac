//! `--web.config.file`: TLS, basic authentication, client certificates and
//! reloading, with curl as the client and certificates made by openssl in
//! the test.

mod support;

use support::Place;

use support::OutputWithin;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::{Exporter, Recorded};

/// A folder of certificates and configurations, removed on drop.
struct Folder(PathBuf);

impl Folder {
    fn new(name: &str) -> Folder {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Folder(path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(folder: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(folder)
        .output_within()
        .expect("openssl is needed");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// How the test's keys are made.
const KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// The server extensions: a certificate for 127.0.0.1.
const SERVER: &str = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n";

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
fn certificates(folder: &Folder) {
    let dir = &folder.0;
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "1",
        "-subj",
        "/CN=portstat test CA",
    ];
    ca.extend(KEY);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
    openssl(dir, &ca);
    for (name, extensions) in [
        ("server", SERVER),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        signed(folder, name, extensions);
    }
}

/// `NAME.key` and `NAME.crt` for the subject "portstat test NAME", signed
/// by the folder's CA with `extensions`.
fn signed(folder: &Folder, name: &str, extensions: &str) {
    let dir = &folder.0;
    folder.write(&format!("{name}.ext"), extensions);
    let mut request = vec!["req", "-new", "-subj"];
    let subject = format!("/CN=portstat test {name}");
    request.push(&subject);
    request.extend(KEY);
    let key_file = format!("{name}.key");
    let request_file = format!("{name}.csr");
    request.extend(["-keyout", &key_file, "-out", &request_file]);
    openssl(dir, &request);
    let certificate = format!("{name}.crt");
    let extension_file = format!("{name}.ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &request_file,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &extension_file,
            "-out",
            &certificate,
        ],
    );
}

fn curl(folder: &Folder, args: &[&str]) -> Output {
    Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "5", "--cacert"])
        .arg(folder.path("ca.crt"))
        .args(["--write-out", "\n%{http_code}"])
        .args(args)
        .output_within()
        .expect("curl is needed")
}

/// The HTTP status curl got, or `None` when it got no answer.
fn status(output: &Output) -> Option<u16> {
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines().last()?.parse().ok().filter(|&code| code != 0)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The exporter's URL for `path`, over TLS.
fn url(exporter: &Exporter, path: &str) -> String {
    format!("https://{}{path}", exporter.address())
}

#[test]
fn tls_and_basic_auth_with_a_reload() {
    let folder = Folder::new("auth");
    certificates(&folder);
    let hash = bcrypt::hash("first secret", 10).unwrap();
    let config_text = |hash: &str| {
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS12\n\
             basic_auth_users:\n  prometheus: '{hash}'\n\
             http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
        )
    };
    let config = folder.write("web.yml", &config_text(&hash));
    let place = Recorded::new((40000, 40099), "");
    let exporter = place.spawn_exporter(&["--web.config.file", config.to_str().unwrap()]);
    // Up, and past its first sample: before it the exposition is empty.
    wait_until("the TLS port and the first sample", || {
        let output = curl(
            &folder,
            &["-u", "prometheus:first secret", &url(&exporter, "/metrics")],
        );
        status(&output) == Some(200)
            && String::from_utf8_lossy(&output.stdout).contains("portstat_ephemeral_ports_capacity")
    });

    assert_eq!(
        status(&curl(&folder, &[&url(&exporter, "/metrics")])),
        Some(401),
        "no credentials"
    );
    assert_eq!(
        status(&curl(
            &folder,
            &["-u", "prometheus:wrong", &url(&exporter, "/metrics")]
        )),
        Some(401),
        "a wrong password"
    );
    assert_eq!(
        status(&curl(
            &folder,
            &["-u", "someone:first secret", &url(&exporter, "/metrics")]
        )),
        Some(401),
        "an unknown user"
    );
    let good = curl(
        &folder,
        &[
            "-u",
            "prometheus:first secret",
            "--include",
            &url(&exporter, "/metrics"),
        ],
    );
    assert_eq!(status(&good), Some(200));
    let text = String::from_utf8_lossy(&good.stdout);
    assert!(
        text.contains("portstat_ephemeral_ports_capacity 100"),
        "{text}"
    );
    assert!(
        text.to_ascii_lowercase()
            .contains("x-content-type-options: nosniff"),
        "{text}"
    );
    // Plain HTTP to the TLS port is told so, as Go's servers tell it.
    let plain = curl(
        &folder,
        &[&format!("http://{}/metrics", exporter.address())],
    );
    assert_eq!(status(&plain), Some(400), "{plain:?}");
    assert!(
        String::from_utf8_lossy(&plain.stdout)
            .contains("Client sent an HTTP request to an HTTPS server."),
        "{plain:?}"
    );

    // A new password is picked up without a restart.
    let new_hash = bcrypt::hash("second secret", 10).unwrap();
    std::fs::write(&config, config_text(&new_hash)).unwrap();
    wait_until("the reload", || {
        status(&curl(
            &folder,
            &[
                "-u",
                "prometheus:second secret",
                &url(&exporter, "/metrics"),
            ],
        )) == Some(200)
    });
    assert_eq!(
        status(&curl(
            &folder,
            &["-u", "prometheus:first secret", &url(&exporter, "/metrics")]
        )),
        Some(401)
    );
    // A broken file is refused, and the one in force stays.
    std::fs::write(
        &config,
        "tls_server_config:\n  cert_file: server.crt\n  colour: red\n",
    )
    .unwrap();
    wait_until("the refusal in the log", || {
        exporter.log().contains("not reloaded")
    });
    assert!(
        exporter.log().contains("unknown field `colour`"),
        "{}",
        exporter.log()
    );
    assert_eq!(
        status(&curl(
            &folder,
            &[
                "-u",
                "prometheus:second secret",
                &url(&exporter, "/metrics")
            ]
        )),
        Some(200)
    );
    // An emptied file, as a half-failed template run leaves, would turn TLS
    // and authentication off: refused, and both stay.
    std::fs::write(&config, "").unwrap();
    wait_until("the refusal to lower security", || {
        exporter.log().contains("a reload may not lower security")
    });
    assert!(
        exporter.log().contains("it would turn TLS off"),
        "{}",
        exporter.log()
    );
    assert_eq!(
        status(&curl(&folder, &[&url(&exporter, "/metrics")])),
        Some(401),
        "no credentials, after the emptied file"
    );
    assert_eq!(
        status(&curl(
            &folder,
            &[
                "-u",
                "prometheus:second secret",
                &url(&exporter, "/metrics")
            ]
        )),
        Some(200)
    );
}

#[test]
fn client_certificates_are_required_when_configured() {
    let folder = Folder::new("clients");
    certificates(&folder);
    let config = folder.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n",
    );
    let place = Recorded::new((40000, 40099), "");
    let exporter = place.spawn_exporter(&["--web.config.file", config.to_str().unwrap()]);
    let client = folder.path("client.crt");
    let client_key = folder.path("client.key");
    let with_certificate = [
        "--cert",
        client.to_str().unwrap(),
        "--key",
        client_key.to_str().unwrap(),
        &url(&exporter, "/metrics"),
    ];
    wait_until("the TLS port", || {
        status(&curl(&folder, &with_certificate)) == Some(200)
    });
    let without = curl(&folder, &[&url(&exporter, "/metrics")]);
    assert!(
        status(&without).is_none(),
        "a client without a certificate got in: {without:?}"
    );
    // The server's own certificate is not a client certificate.
    let server = folder.path("server.crt");
    let server_key = folder.path("server.key");
    let wrong = curl(
        &folder,
        &[
            "--cert",
            server.to_str().unwrap(),
            "--key",
            server_key.to_str().unwrap(),
            &url(&exporter, "/metrics"),
        ],
    );
    assert!(status(&wrong).is_none(), "{wrong:?}");
}

#[test]
fn a_bad_configuration_at_start_exits_1_naming_the_field() {
    let folder = Folder::new("bad");
    certificates(&folder);
    for (text, field) in [
        (
            "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n",
            "tls_server_config.cert_file",
        ),
        (
            "basic_auth_users:\n  alice: plain\n",
            "basic_auth_users.alice",
        ),
        (
            "basic_auth_user:\n  alice: x\n",
            "unknown field `basic_auth_user`",
        ),
        // With a certificate and key that load, so that the version itself
        // is what is refused.
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: SSL3\n",
            "tls_server_config.min_version: \"SSL3\": expected TLS12 or TLS13",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS13\n  max_version: TLS12\n",
            "tls_server_config.max_version: below min_version",
        ),
    ] {
        let config = folder.write("web.yml", text);
        let output = Command::new(support::exporter())
            .args(["--web.listen-address", "127.0.0.1:0", "--web.config.file"])
            .arg(&config)
            .output_within()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{text}: {stderr}");
        assert!(stderr.contains(field), "{text}: {stderr}");
    }
}

/// The subject of the certificate the exporter presents.
fn served_subject(exporter: &Exporter) -> String {
    let output = Command::new("sh")
        .args([
            "-c",
            &format!(
                "openssl s_client -connect {} </dev/null 2>/dev/null \
                 | openssl x509 -noout -subject",
                exporter.address()
            ),
        ])
        .output_within()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// certbot and cert-manager renew by renaming new files into place, and
/// send no signal: the exporter serves the new certificate all the same.
#[test]
fn a_renewed_certificate_is_served_without_a_signal() {
    let folder = Folder::new("renew");
    certificates(&folder);
    let config = folder.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
    );
    let place = Recorded::new((40000, 40099), "");
    let exporter = place.spawn_exporter(&["--web.config.file", config.to_str().unwrap()]);
    wait_until("the TLS port", || {
        served_subject(&exporter).contains("portstat test server")
    });
    signed(&folder, "renewed", SERVER);
    std::fs::rename(folder.path("renewed.crt"), folder.path("server.crt")).unwrap();
    std::fs::rename(folder.path("renewed.key"), folder.path("server.key")).unwrap();
    wait_until("the renewed certificate", || {
        served_subject(&exporter).contains("portstat test renewed")
    });
    // Verified by the client, against the CA (the first sample need not
    // be done: /-/healthy answers before it).
    assert_eq!(
        status(&curl(&folder, &[&url(&exporter, "/-/healthy")])),
        Some(200),
        "{}",
        exporter.log()
    );
    assert!(
        exporter.log().contains("web configuration reloaded"),
        "{}",
        exporter.log()
    );
}

/// A certificate past its end is loaded, as before, but said in the log.
#[test]
fn an_expired_certificate_is_warned_of() {
    let folder = Folder::new("expired");
    let dir = &folder.0;
    folder.write(
        "ca.cnf",
        "[ca]\ndefault_ca = lab\n[lab]\ndatabase = index.txt\nnew_certs_dir = .\n\
         serial = serial\ndefault_md = sha256\npolicy = any\nx509_extensions = server\n\
         [any]\ncommonName = supplied\n[server]\nsubjectAltName = IP:127.0.0.1\n",
    );
    folder.write("index.txt", "");
    folder.write("serial", "01\n");
    let mut request = vec!["req", "-new", "-subj", "/CN=portstat test expired"];
    request.extend(KEY);
    request.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(dir, &request);
    openssl(
        dir,
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-selfsign",
            "-keyfile",
            "server.key",
            "-in",
            "server.csr",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200301000000Z",
            "-notext",
            "-out",
            "server.crt",
        ],
    );
    let config = folder.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
    );
    let place = Recorded::new((40000, 40099), "");
    let exporter = place.spawn_exporter(&["--web.config.file", config.to_str().unwrap()]);
    wait_until("the warning", || {
        exporter
            .log()
            .contains("the certificate expired at 2020-03-01T00:00:00Z")
    });
    let log = exporter.log();
    assert!(log.contains("level=warn"), "{log}");
    assert!(log.contains("clients that verify it will refuse"), "{log}");
}

/// Files that are not regular files, or are too big, are refused at start
/// at once, with a message; nothing waits on a FIFO or reads a device.
#[test]
fn a_configuration_that_is_no_regular_file_is_refused_at_start() {
    let folder = Folder::new("special");
    let fifo = folder.path("fifo.yml");
    let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `name` is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    let big = folder.write("big.yml", &format!("# {}\n", "x".repeat(2 << 20)));
    for (config, reason) in [
        (fifo.as_path(), "not a regular file"),
        (Path::new("/dev/zero"), "not a regular file"),
        (big.as_path(), "longer than 1048576 bytes"),
    ] {
        let mut child = Command::new(support::exporter())
            .args(["--web.listen-address", "127.0.0.1:0", "--web.config.file"])
            .arg(config)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{}: the exporter did not exit", config.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(1), "{}: {stderr}", config.display());
        assert!(stderr.contains(reason), "{}: {stderr}", config.display());
    }
}

/// Reloads of hostile files (deep brackets, a FIFO, a device) are refused
/// without stalling a request, and SIGTERM still ends the exporter.
#[test]
fn a_hostile_reload_stalls_no_request() {
    let folder = Folder::new("hostile");
    let hash = bcrypt::hash("secret", 10).unwrap();
    let config = folder.write(
        "web.yml",
        &format!("basic_auth_users:\n  prometheus: '{hash}'\n"),
    );
    let place = Recorded::new((40000, 40099), "");
    let mut exporter = place.spawn_exporter(&["--web.config.file", config.to_str().unwrap()]);
    wait_until("the exporter", || {
        exporter
            .get("/-/healthy")
            .is_ok_and(|response| response.status == 401)
    });
    let stop = std::sync::atomic::AtomicBool::new(false);
    /// Stops the watcher however the scope ends, so that a failed wait
    /// does not leave the scope waiting on it.
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let (slowest, failures) = std::thread::scope(|scope| {
        let _stop = Stop(&stop);
        let watcher = scope.spawn(|| {
            let mut slowest = Duration::ZERO;
            let mut failures = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let begun = Instant::now();
                match exporter.get("/-/healthy") {
                    // Authentication is on: the answer is a 401, at once.
                    Ok(response) if response.status == 401 => {}
                    other => failures.push(format!("{other:?}")),
                }
                slowest = slowest.max(begun.elapsed());
                std::thread::sleep(Duration::from_millis(20));
            }
            (slowest, failures)
        });
        let refused = |what: &str, reason: &str| {
            wait_until(what, || {
                exporter
                    .log()
                    .lines()
                    .any(|line| line.contains("not reloaded") && line.contains(reason))
            })
        };
        let nested = format!(
            "basic_auth_users: {}{}\n",
            "[".repeat(60_000),
            "]".repeat(60_000)
        );
        let replacement = folder.write("nested.yml", &nested);
        std::fs::rename(&replacement, &config).unwrap();
        refused("the nested brackets", "nested more than 32 deep");
        let fifo = folder.path("fifo");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `name` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        std::fs::rename(&fifo, &config).unwrap();
        refused("the FIFO", "not a regular file");
        std::fs::remove_file(&config).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &config).unwrap();
        exporter.signal(libc::SIGHUP);
        wait_until("the device", || {
            exporter
                .log()
                .lines()
                .filter(|line| line.contains("not reloaded") && line.contains("not a regular file"))
                .count()
                >= 2
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        watcher.join().unwrap()
    });
    println!("the slowest request during hostile reloads took {slowest:?}");
    assert!(failures.is_empty(), "{failures:?}\n{}", exporter.log());
    let status = exporter.terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|status| status.success()),
        "SIGTERM did not end the exporter: {status:?}"
    );
}
