//! The landing page, rendered by a real browser: headless Chromium loads it
//! from the exporter inside the test's namespace, dumps the DOM it built and
//! takes a screenshot, whose path the test prints.

mod support;

use support::Place;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use support::{Netns, own_comm};

/// Runs Chromium inside the namespace with `args` and the page's address,
/// killed if it takes longer than a minute.
fn chromium(netns: &Netns, profile: &Path, args: &[&str]) -> Output {
    let mut child = netns
        .command("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg("http://127.0.0.1:10042/")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("chromium is needed (Debian package chromium); .ci/run installs it");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// The width and height in a PNG's header.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    (width, height)
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn the_landing_page_shows_fill_destinations_and_listeners_in_a_browser() {
    support::require_bpf();
    let netns = Netns::new((40000, 40099), "40090-40099");
    let _held = netns.run(|| {
        let server = TcpListener::bind("127.0.0.1:80").unwrap();
        let inside = TcpListener::bind("0.0.0.0:40050").unwrap();
        let streams: Vec<TcpStream> = (0..72)
            .map(|_| TcpStream::connect("127.0.0.1:80").unwrap())
            .collect();
        (server, inside, streams)
    });
    let exporter = netns.start_exporter(&["--collector.interval", "200ms"]);
    let metrics = exporter
        .metrics_until(|metrics| {
            metrics.get(r#"portstat_ephemeral_ports_used{protocol="tcp"}"#) == Some(73.0)
        })
        .unwrap();
    assert_eq!(
        metrics.value(r#"portstat_ephemeral_ports_used{protocol="tcp"}"#),
        73.0
    );

    let profile =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("chromium-{}", std::process::id()));
    let output = chromium(&netns, &profile, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        dom.contains("<h1>portstat_exporter</h1>"),
        "Chromium did not render the page: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // 73 of 90 ports: 81.1 %, past the warning threshold.
    let tcp = dom
        .split("<tr id=\"fill-tcp\">")
        .nth(1)
        .and_then(|rest| rest.split("</tr>").next())
        .expect("the TCP fill row");
    assert!(tcp.contains(">73<"), "{tcp}");
    assert!(
        tcp.contains("class=\"fill warning\" style=\"width:81.1%\""),
        "{tcp}"
    );
    // The busiest destination: 72 ports + 1 exclusive = 73 of 90.
    let busiest = dom
        .split("<tr id=\"fill-busiest\">")
        .nth(1)
        .and_then(|rest| rest.split("</tr>").next())
        .expect("the busiest-destination row");
    assert!(busiest.contains("81.1%"), "{busiest}");
    let destinations = dom
        .split("<table id=\"destinations\">")
        .nth(1)
        .and_then(|rest| rest.split("</table>").next())
        .expect("the destinations table");
    assert!(
        destinations.contains("<tr class=\"low\"><td>127.0.0.1</td><td>127.0.0.1:80</td><td class=\"num\">72</td><td class=\"num\">17</td>"),
        "highlighted as the warning alert would fire: {destinations}"
    );
    // The verdict: the destination with the least headroom, at a glance.
    assert!(
        dom.contains("<p id=\"verdict\" class=\"verdict warning\">81.1% toward 127.0.0.1:80: 17 ports left</p>"),
        "{dom}"
    );
    // Established apart from TIME_WAIT (the browser's own connections to
    // the exporter may be among them, in whichever state at the sample).
    let states = dom
        .split("<p class=\"meta\" id=\"tcp-states\">TCP sockets in the range: ")
        .nth(1)
        .and_then(|rest| rest.split("</p>").next())
        .expect("the TCP states line");
    let established: u32 = states
        .split(" established")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(established >= 72, "{states}");
    assert!(states.contains(" in TIME_WAIT, of which "), "{states}");
    let listeners = dom
        .split("<table id=\"listeners\">")
        .nth(1)
        .and_then(|rest| rest.split("</table>").next())
        .expect("the listeners table");
    let inside = listeners
        .split("<tr")
        .find(|row| row.contains("<td class=\"num\">40050</td>"))
        .expect("the listener inside the range");
    assert!(inside.starts_with(" class=\"inside\""), "{inside}");
    assert!(inside.contains(&own_comm()), "{inside}");
    let outside = listeners
        .split("<tr")
        .find(|row| row.contains("<td class=\"num\">80</td>"))
        .expect("the listener outside the range");
    assert!(!outside.contains("inside"), "{outside}");
    assert!(dom.contains("Last successful sample: 20"), "no sample time");
    assert!(dom.contains("<a href=\"/metrics\">Metrics</a>"));

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("landing-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let output = chromium(
        &netns,
        &profile,
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1100,1400",
        ],
    );
    let bytes = std::fs::read(&screenshot).unwrap_or_else(|error| {
        panic!(
            "no screenshot ({error}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(png_size(&bytes), (1100, 1400));
    assert!(bytes.len() > 10_000, "a near-empty screenshot");
    println!("screenshot of the landing page: {}", screenshot.display());
    // The README's image is this screenshot: PORTSTAT_UPDATE_SCREENSHOT=1
    // writes it there.
    if std::env::var_os("PORTSTAT_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/landing-page.png"),
            &bytes,
        )
        .unwrap();
    }

    // No call has failed yet; then the destination's last 17 ports, and
    // two calls that find none.
    assert!(
        dom.contains("<span id=\"failure-totals\">tcp connect() 0</span>"),
        "{dom}"
    );
    let _more = netns.run(|| {
        let streams: Vec<TcpStream> = (0..17)
            .map(|_| TcpStream::connect("127.0.0.1:80").unwrap())
            .collect();
        for _ in 0..2 {
            let error = TcpStream::connect("127.0.0.1:80").unwrap_err();
            assert_eq!(error.kind(), std::io::ErrorKind::AddrNotAvailable);
        }
        streams
    });
    exporter
        .metrics_until(|metrics| {
            metrics.get(r#"portstat_ephemeral_connect_failures_total{protocol="tcp"}"#) == Some(2.0)
        })
        .unwrap();
    let output = chromium(&netns, &profile, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        dom.contains("<span id=\"failure-totals\" class=\"failing\">tcp connect() 2</span>"),
        "{dom}"
    );
    let table = |id: &str| {
        dom.split(&format!("<table id=\"{id}\">"))
            .nth(1)
            .and_then(|rest| rest.split("</table>").next())
            .unwrap_or_else(|| panic!("the {id} table"))
            .to_string()
    };
    let destinations = table("failure-destinations");
    assert!(
        destinations.contains(
            "<td>tcp</td><td>127.0.0.1</td><td>127.0.0.1:80</td><td class=\"num\">2</td>"
        ),
        "{destinations}"
    );
    // Named with its pid: the test's own process made the calls.
    let processes = table("failure-processes");
    assert!(
        processes.contains(&format!(
            "<td>{} (pid {})</td><td>connect()</td><td>tcp</td><td class=\"num\">2</td>",
            own_comm(),
            std::process::id()
        )),
        "{processes}"
    );
    let _ = std::fs::remove_dir_all(&profile);
}
