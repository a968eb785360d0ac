//! The kernel matrix: the truth lab (`tests/headroom.rs`), the BPF
//! source's tests (`tests/bpf.rs`), the failure counter's
//! (`tests/failures.rs`) and the connect counter's (`tests/connects.rs`)
//! run on the host's kernel and inside each
//! kernel users run, booted under QEMU over the host's root filesystem
//! with virtme-ng; then the kernel × source table of `docs/sources.md` is
//! built from the truth lab's results and must be the one committed.
//!
//! It boots kernels for minutes, so it is left out of the plain test run:
//!
//! ```sh
//! cargo test --locked --test kernel_matrix -- --ignored --nocapture
//! ```
//!
//! `.ci/run` runs it the same way, after installing what it needs:
//! Debian's `linux-image-6.1.0-*-amd64` and `linux-image-6.12.*+deb12-amd64`
//! (the newest of each), `qemu-system-x86`, `busybox-static`, and
//! virtme-ng from PyPI. The guests run under TCG (`--disable-kvm`): a
//! nested KVM guest hangs at boot on the VMs this is developed on. With
//! `PORTSTAT_UPDATE_MATRIX=1` the table in `docs/sources.md` is rewritten
//! from the results rather than compared.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The kernels of the matrix beside the host's: the newest installed
/// kernel image whose name starts with each prefix and ends with the
/// suffix, as Debian names its generic images. 6.1 and 6.12 come from
/// bookworm's suites, the newest 6.18 and 7.x from trixie-backports
/// (`.ci/backports-kernel`).
const KERNELS: [(&str, &str); 4] = [
    ("vmlinuz-6.1.0-", "-amd64"),
    ("vmlinuz-6.12.", "+deb12-amd64"),
    ("vmlinuz-6.18.", "+deb13-amd64"),
    ("vmlinuz-7.", "+deb13-amd64"),
];

/// The test binaries run in each kernel.
const LABS: [&str; 4] = ["headroom", "bpf", "failures", "connects"];

/// Where the truth lab's table is, between these two lines.
const TABLE_START: &str = "<!-- kernel-matrix: start -->";
const TABLE_END: &str = "<!-- kernel-matrix: end -->";

/// Where the verifier's table is, between these two lines.
const VERIFIER_START: &str = "<!-- verifier-matrix: start -->";
const VERIFIER_END: &str = "<!-- verifier-matrix: end -->";

#[test]
#[ignore = "boots kernels under QEMU for minutes: run with --ignored (see docs/sources.md)"]
fn every_kernel_of_the_matrix() {
    support::require_root();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("target").join("kernel-matrix");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let results = out.join("results.tsv");
    let verifier = out.join("verifier.tsv");
    let labs = lab_binaries(root);
    // The guests read the host's files over 9p, which caches nothing but
    // below /tmp (an overlay in the guest): an exporter started a hundred
    // times is read from there, not from the tree, a second a start
    // faster under emulation.
    let copy = TemporaryCopy::of(&release_exporter(root));
    let exporter = copy.path.clone();
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string();

    let started = Instant::now();
    run_labs(None, &labs, &exporter, &results, &verifier, &out);
    println!(
        "host kernel {host}: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    for (prefix, suffix) in KERNELS {
        let image = newest_kernel(prefix, suffix).unwrap_or_else(|| {
            panic!(
                "no /boot/{prefix}*{suffix}: install the newest such Debian kernel image \
                 (.ci/run does)"
            )
        });
        let started = Instant::now();
        run_labs(Some(&image), &labs, &exporter, &results, &verifier, &out);
        println!(
            "{}: {:.0} s",
            image.display(),
            started.elapsed().as_secs_f64()
        );
    }

    // The host's kernel differs from one machine to the next: its labs
    // must pass, but the tables are of Debian's kernels, the same on every
    // machine.
    let rows: Vec<Row> = read_results(&results)
        .into_iter()
        .filter(|row| row.kernel != host)
        .collect();
    let costs = read_costs(&verifier);
    println!("{}", verifier_table(&costs));
    let costs: Vec<Cost> = costs
        .into_iter()
        .filter(|cost| cost.kernel != host)
        .collect();
    let docs = root.join("docs").join("sources.md");
    let text = std::fs::read_to_string(&docs).unwrap();
    let (text, committed_truth, built_truth) =
        replace_between(&text, TABLE_START, TABLE_END, &table(&rows));
    let (text, committed_costs, _) =
        replace_between(&text, VERIFIER_START, VERIFIER_END, &verifier_table(&costs));
    if std::env::var_os("PORTSTAT_UPDATE_MATRIX").is_some() {
        std::fs::write(&docs, text).unwrap();
    } else {
        assert_eq!(
            committed_truth, built_truth,
            "the kernel matrix gave another table than docs/sources.md holds; \
             rerun with PORTSTAT_UPDATE_MATRIX=1 to write it, and read the difference"
        );
        // The verifier's figures change only with the kernel and the programs,
        // but load times vary from run to run: the committed table must
        // name the same kernels and programs, and every program on every
        // kernel was held within the budget by the labs themselves.
        let keys = |table: &str| -> Vec<String> {
            table
                .lines()
                .map(|line| {
                    line.split('|')
                        .nth(1)
                        .unwrap_or_default()
                        .trim()
                        .to_string()
                })
                .collect()
        };
        assert_eq!(
            keys(&committed_costs),
            keys(&format!("\n{}", verifier_table(&costs))),
            "the verifier's table in docs/sources.md names other kernels or programs than \
             the matrix measured; rerun with PORTSTAT_UPDATE_MATRIX=1 to write it"
        );
        let header = |table: &str| table.lines().nth(1).unwrap_or_default().to_string();
        assert_eq!(
            header(&committed_costs),
            header(&format!("\n{}", verifier_table(&costs))),
            "the verifier's table in docs/sources.md names other kernels than the matrix \
             measured; rerun with PORTSTAT_UPDATE_MATRIX=1 to write it"
        );
    }
}

/// `text` with what stands between the lines `start` and `end` replaced by
/// `table`; with what stood there, and what stands there now.
fn replace_between(text: &str, start: &str, end: &str, table: &str) -> (String, String, String) {
    let (before, rest) = text
        .split_once(start)
        .unwrap_or_else(|| panic!("docs/sources.md has the line {start}"));
    let (committed, after) = rest
        .split_once(end)
        .unwrap_or_else(|| panic!("docs/sources.md has the line {end}"));
    let built = format!("\n{table}");
    (
        format!("{before}{start}{built}{end}{after}"),
        committed.to_string(),
        built,
    )
}

/// What verifying one program cost on one kernel
/// (`tests/bpf.rs::every_program_verifies_within_a_tenth_of_the_budget`).
#[derive(Debug, Clone)]
struct Cost {
    kernel: String,
    program: String,
    instructions: u64,
    load_microseconds: u64,
}

fn read_costs(path: &Path) -> Vec<Cost> {
    read_lines(path, "verifier figures")
        .into_iter()
        .map(|fields| Cost {
            kernel: fields[0].clone(),
            program: format!("{}/{}", fields[1], fields[2]),
            instructions: fields[3].parse().unwrap(),
            load_microseconds: fields[7].parse().unwrap(),
        })
        .collect()
}

/// The lines of a results file the labs wrote, eight fields each.
fn read_lines(path: &Path, what: &str) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("no {what} in {}: {error}", path.display()))
        .lines()
        .map(|line| {
            let fields: Vec<String> = line.split('\t').map(str::to_string).collect();
            assert_eq!(fields.len(), 8, "a line of {what}: {line}");
            fields
        })
        .collect()
}

/// The kernel series of `releases`, each once, oldest first.
fn sorted_series<'a>(releases: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut kernels: Vec<String> = releases
        .map(series)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    kernels.sort_by_key(|kernel| {
        kernel
            .split('.')
            .map(|part| part.parse::<u32>().unwrap_or(0))
            .collect::<Vec<_>>()
    });
    kernels
}

/// The verifier's table: a row per program, a column per kernel series,
/// each cell the instructions the verifier processed and how long the load
/// took (under QEMU's emulation, for the guests).
fn verifier_table(costs: &[Cost]) -> String {
    let kernels = sorted_series(costs.iter().map(|cost| cost.kernel.as_str()));
    let programs: BTreeSet<&str> = costs.iter().map(|cost| cost.program.as_str()).collect();
    let mut text = String::from("| program |");
    for kernel in &kernels {
        text.push_str(&format!(" Linux {kernel} |"));
    }
    text.push_str(&format!("\n|---|{}\n", "---|".repeat(kernels.len())));
    for program in programs {
        text.push_str(&format!("| `{program}` |"));
        for kernel in &kernels {
            let cell: Vec<&Cost> = costs
                .iter()
                .filter(|cost| cost.program == program && &series(&cost.kernel) == kernel)
                .collect();
            match cell.iter().map(|cost| cost.instructions).max() {
                Some(instructions) => {
                    let load = cell
                        .iter()
                        .map(|cost| cost.load_microseconds)
                        .max()
                        .unwrap_or(0);
                    text.push_str(&format!(
                        " {} insns, {:.0} ms |",
                        group_thousands(instructions),
                        (load as f64 / 1000.0).ceil()
                    ));
                }
                None => text.push_str(" not run |"),
            }
        }
        text.push('\n');
    }
    text
}

/// `n` with a comma between each group of three digits.
fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut text = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            text.push(',');
        }
        text.push(digit);
    }
    text
}

/// A copy of a file in a folder of its own below the temporary folder,
/// removed with the folder on drop.
struct TemporaryCopy {
    folder: PathBuf,
    path: PathBuf,
}

impl TemporaryCopy {
    fn of(file: &Path) -> TemporaryCopy {
        let folder = std::env::temp_dir().join(format!("portstat-matrix-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        let path = folder.join(file.file_name().unwrap());
        std::fs::copy(file, &path).unwrap();
        TemporaryCopy { folder, path }
    }
}

impl Drop for TemporaryCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

/// Builds the labs' test binaries (already built by the test run that runs
/// this) and returns their paths.
fn lab_binaries(root: &Path) -> Vec<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .args(["test", "--locked", "--no-run", "--message-format=json"]);
    for lab in LABS {
        command.args(["--test", lab]);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "cannot build the labs: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut binaries = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let name = message["target"]["name"].as_str().unwrap_or_default();
        if let Some(executable) = message["executable"].as_str()
            && LABS.contains(&name)
        {
            binaries.insert(name.to_string(), PathBuf::from(executable));
        }
    }
    assert_eq!(binaries.len(), LABS.len(), "found {binaries:?}");
    binaries.into_values().collect()
}

/// Builds the exporter with the release profile and returns its path: the
/// guests run it, since a debug build takes seconds to load over 9p under
/// TCG at each of the lab's hundreds of runs.
fn release_exporter(root: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args([
            "build",
            "--locked",
            "--release",
            "--bin",
            "portstat_exporter",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "cannot build the release exporter");
    root.join("target/release/portstat_exporter")
}

/// The newest `/boot/PREFIX*SUFFIX`, by the version numbers in its name.
fn newest_kernel(prefix: &str, suffix: &str) -> Option<PathBuf> {
    let mut images: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let middle = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
            let version = middle
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|part| part.parse().ok())
                .collect();
            Some((version, entry.path()))
        })
        .collect();
    images.sort();
    images.pop().map(|(_, path)| path)
}

/// Runs every lab on the host (`image` None) or inside the kernel `image`,
/// with the exporter `exporter`, appending the truth lab's results to
/// `results` and the verifier's figures to `verifier`; fails with the
/// labs' output when any of their tests fails.
fn run_labs(
    image: Option<&Path>,
    labs: &[PathBuf],
    exporter: &Path,
    results: &Path,
    verifier: &Path,
    out: &Path,
) {
    // One shell command that runs each lab and fails when any fails. The
    // guest's descriptor limit is raised to the host's, for the tests that
    // hold thousands of sockets.
    // A guest skips the test whose program keeps the verifier busy for its
    // whole budget (minutes under emulation): it tests the daemon's start,
    // not the kernel, and runs on the host.
    let skip = if image.is_some() {
        " --skip a_daemon_logs_a_refusal_after_its_first_samples_once_with_the_reason"
    } else {
        ""
    };
    // Each lab writes its output to a file of `out`, which the guest
    // shares with the host over 9p, and then to the console: when a guest
    // dies mid-run, what its labs said up to then is still on the host.
    // The labs' figures of one attempt go to files of their own, added to
    // `results` and `verifier` when it succeeds, so that an attempt begun
    // again counts once.
    let attempt_results = out.join("attempt-results.tsv");
    let attempt_verifier = out.join("attempt-verifier.tsv");
    let script: Vec<String> = labs
        .iter()
        .map(|lab| {
            let log = lab_log(out, lab);
            format!(
                "PORTSTAT_TRUTH_LAB_RESULTS={} PORTSTAT_VERIFIER_RESULTS={} \
                 PORTSTAT_TEST_EXPORTER={} {}{skip} >{log} 2>&1; lab=$?; cat {log}; \
                 [ $lab = 0 ] || status=1",
                attempt_results.display(),
                attempt_verifier.display(),
                exporter.display(),
                lab.display(),
                log = log.display(),
            )
        })
        .collect();
    // What the kernel said of TCP meanwhile (orphans reset, memory
    // pressure) goes with a failure's output. The first thing the script
    // does is say that it runs, so that a guest that never came up is told
    // apart from labs that take long, and the last is to say that it
    // finished, so that a guest that died on the way is told apart from
    // labs that failed.
    let started = out.join("labs-started");
    let finished = out.join("labs-finished");
    let _ = std::fs::remove_file(&started);
    let script = format!(
        "touch {}; ulimit -n 20000; status=0; {}; dmesg | grep -i tcp | tail -n 5; touch {}; exit $status",
        started.display(),
        script.join("; "),
        finished.display()
    );
    // The guest is handed the script as a file: virtme-ng passes a command
    // on the kernel's command line, which holds 2,048 bytes, and a longer
    // one leaves the guest idle at boot.
    let script_path = out.join("labs.sh");
    std::fs::write(&script_path, &script).unwrap();
    let script = format!("sh {}", script_path.display());
    let where_ = image.map_or("the host".to_string(), |image| image.display().to_string());
    for attempt in 1..=BOOT_ATTEMPTS {
        for stale in [&started, &finished, &attempt_results, &attempt_verifier] {
            let _ = std::fs::remove_file(stale);
        }
        for lab in labs {
            let _ = std::fs::remove_file(lab_log(out, lab));
        }
        let mut command = labs_command(image, &script, out);
        let Some((status, stdout, stderr)) =
            run_unless_it_never_starts(&mut command, &started, out)
        else {
            println!(
                "{where_}: the guest did not come up within {BOOT_LIMIT:?} \
                 (attempt {attempt} of {BOOT_ATTEMPTS}); booting it again"
            );
            continue;
        };
        if status.success() {
            for (attempt, all) in [(&attempt_results, results), (&attempt_verifier, verifier)] {
                let figures = std::fs::read_to_string(attempt).unwrap_or_default();
                let mut all = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(all)
                    .unwrap();
                std::io::Write::write_all(&mut all, figures.as_bytes()).unwrap();
            }
            return;
        }
        let logs: String = labs
            .iter()
            .map(|lab| {
                let log = lab_log(out, lab);
                format!(
                    "--- {}:\n{}\n",
                    log.display(),
                    std::fs::read_to_string(&log).unwrap_or_else(|_| "(not started)".into())
                )
            })
            .collect();
        let console = last_lines(&stderr, 60);
        // A lab that failed, or a kernel that crashed running the labs,
        // fails the matrix. A guest that went away with neither is booted
        // again: one that crashed before its script started (at boot), one
        // whose emulator ended with no word on its console, and one that
        // took a breakpoint trap in the kernel's own text (`Oops: int3`),
        // which is how QEMU's TCG shows a race with the kernel patching its
        // code (jump labels, alternatives) that hardware does not have.
        let crashed = ["Kernel panic", "BUG:", "Oops", "general protection", "RIP:"]
            .iter()
            .any(|sign| stderr.contains(sign));
        let emulator = !started.exists() || !crashed || stderr.contains("Oops: int3");
        let failed = logs.contains("test result: FAILED") || logs.contains("panicked at");
        assert!(
            image.is_some() && !finished.exists() && !failed && emulator,
            "the labs failed on {where_} ({}):\n{logs}\nconsole, last lines:\n{console}\nstdout:\n{}",
            if finished.exists() {
                "the script finished"
            } else {
                "the guest died before its script finished"
            },
            last_lines(&stdout, 40),
        );
        println!(
            "{where_}: the guest went away before its script finished, with no \
             failed test (attempt {attempt} of {BOOT_ATTEMPTS}); booting it again. \
             Its labs said:\n{logs}\nconsole, last lines:\n{console}"
        );
    }
    panic!("{where_}: the guest never ran its labs through in {BOOT_ATTEMPTS} attempts");
}

/// The file in `out` where `lab` writes its output.
fn lab_log(out: &Path, lab: &Path) -> PathBuf {
    let name = lab.file_name().unwrap().to_string_lossy();
    out.join(format!("{name}.log"))
}

/// The last `count` lines of `text`.
fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// How long a guest may take to come up and start the labs: about 25 s
/// under TCG; a guest that has not by then is taken for hung at boot.
const BOOT_LIMIT: std::time::Duration = std::time::Duration::from_secs(240);

/// How many times a guest that hangs at boot, or whose emulator goes away
/// with no test failed and no kernel crash, is booted.
const BOOT_ATTEMPTS: u32 = 3;

/// Runs `command` to its end, its output in files below `out`, and returns
/// its status and output; `None`, having killed it, where the file
/// `started` did not appear within `BOOT_LIMIT`.
fn run_unless_it_never_starts(
    command: &mut Command,
    started: &Path,
    out: &Path,
) -> Option<(std::process::ExitStatus, String, String)> {
    let stdout_path = out.join("labs-stdout.txt");
    let stderr_path = out.join("labs-stderr.txt");
    let mut child = command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap_or_else(|error| {
            panic!("cannot run {command:?} (is virtme-ng installed?): {error}")
        });
    let began = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if !started.exists() && began.elapsed() > BOOT_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            // virtme-ng leaves its QEMU behind when killed.
            let _ = Command::new("pkill")
                .args(["-f", "qemu-system-x86_64 -name virtme-ng"])
                .status();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    };
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    Some((status, read(&stdout_path), read(&stderr_path)))
}

/// The command that runs `script` on the host (`image` None) or inside the
/// kernel `image`, writing below `out`.
fn labs_command(image: Option<&Path>, script: &str, out: &Path) -> Command {
    match image {
        None => {
            let mut command = Command::new("sh");
            command.args(["-c", script]);
            command
        }
        Some(image) => {
            let mut command = Command::new("vng");
            // `--verbose` puts the guest's kernel console on stderr, where a
            // crash is read.
            command
                .arg("--run")
                .arg(image)
                .args([
                    "--verbose",
                    "--disable-kvm",
                    "--force-9p",
                    "--memory",
                    "2G",
                    "--cpus",
                    "2",
                ])
                // The guest writes the results, and its own files go to a
                // throwaway layer.
                .arg("--rwdir")
                .arg(out)
                .args(["--overlay-rwdir", "/tmp", "--"])
                .arg(script);
            command
        }
    }
}

/// One prediction of the truth lab and what came of it.
#[derive(Debug, Clone)]
struct Row {
    kernel: String,
    source: String,
    headroom: f64,
    slack: f64,
    count: f64,
    exact_flag: bool,
}

fn read_results(path: &Path) -> Vec<Row> {
    read_lines(path, "results")
        .into_iter()
        .map(|fields| Row {
            kernel: fields[0].clone(),
            source: fields[2].clone(),
            headroom: fields[3].parse().unwrap(),
            slack: fields[4].parse().unwrap(),
            count: fields[5].parse().unwrap(),
            exact_flag: fields[6] == "1",
        })
        .collect()
}

/// The kernel series a release belongs to: `6.1` for `6.1.0-57-amd64`.
fn series(release: &str) -> String {
    release.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// The table: a row per kernel series, with how many checks ran there and
/// how many of them on odd-sized ranges, then a column per source, each
/// cell what the source's predictions were against the counts.
fn table(rows: &[Row]) -> String {
    const SOURCES: [(&str, &str); 4] = [
        ("auto", "default (`auto`)"),
        ("bpf", "`bpf`"),
        ("netlink", "`netlink`"),
        ("procfs", "`procfs`"),
    ];
    let kernels = sorted_series(rows.iter().map(|row| row.kernel.as_str()));
    let mut text = String::from("| Linux | checks | of them with slack (odd-sized ranges) |");
    for (_, title) in SOURCES {
        text.push_str(&format!(" {title} |"));
    }
    text.push_str("\n|---|---|---|---|---|---|---|\n");
    for kernel in &kernels {
        let of = |source: &str| -> Vec<&Row> {
            rows.iter()
                .filter(|row| &series(&row.kernel) == kernel && row.source == source)
                .collect()
        };
        let checks = of("bpf");
        let odd = checks.iter().filter(|row| row.slack > 0.0).count();
        text.push_str(&format!("| {kernel} | {} | {odd} |", checks.len()));
        for (source, _) in SOURCES {
            let cell = of(source);
            assert_eq!(cell.len(), checks.len(), "{source} on {kernel}");
            text.push_str(&format!(" {} |", verdict(&cell)));
        }
        text.push('\n');
    }
    text
}

/// What a source's predictions on one kernel came to.
fn verdict(rows: &[&Row]) -> String {
    let checks = rows.len();
    let within = |row: &&Row| row.headroom <= row.count && row.count <= row.headroom + row.slack;
    let matched = rows.iter().filter(|row| within(row)).count();
    // Wrong: fewer predicted than the slack allows, or exactness claimed
    // for a prediction off the count.
    let wrong = rows
        .iter()
        .filter(|row| row.count > row.headroom + row.slack || (row.exact_flag && !within(row)))
        .count();
    if checks == 0 {
        "not run".to_string()
    } else if wrong > 0 {
        format!("**wrong** in {wrong}")
    } else if matched == checks && rows.iter().all(|row| row.exact_flag) {
        "**exact**".to_string()
    } else if matched == checks {
        "exact, yet `headroom_exact` 0".to_string()
    } else {
        format!(
            "exact in {matched}, an upper bound in {}; `headroom_exact` 0",
            checks - matched
        )
    }
}
