//! The deployment artifacts stay in step with what they are made from.

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn the_prometheusrule_is_generated_from_the_alert_rules() {
    let output = Command::new("bash")
        .arg(Path::new(ROOT).join("deploy/kubernetes/generate-prometheusrule.sh"))
        .output()
        .unwrap();
    assert!(output.status.success());
    let committed =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/kubernetes/prometheusrule.yaml"))
            .unwrap();
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        committed,
        "deploy/kubernetes/prometheusrule.yaml drifted from deploy/prometheus/alerts.yml: \
         run deploy/kubernetes/generate-prometheusrule.sh > deploy/kubernetes/prometheusrule.yaml"
    );
}

#[test]
fn every_alert_links_to_a_runbook_heading_that_names_it() {
    let rules =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/prometheus/alerts.yml")).unwrap();
    let mut anchors = 0;
    let mut alert = "";
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            alert = name.trim();
        }
        if let Some(url) = line.trim().strip_prefix("runbook_url: ") {
            // https://github.com/<owner>/<repo>/blob/main/<path>#<anchor>
            let (page, anchor) = url.trim_matches('"').rsplit_once('#').unwrap();
            let path = page.split_once("/blob/main/").unwrap().1;
            let text = std::fs::read_to_string(Path::new(ROOT).join(path))
                .unwrap_or_else(|error| panic!("runbook page {path}: {error}"));
            // GitHub's anchor for a heading "## Name" is its lower-cased name.
            let heading = text
                .lines()
                .filter(|line| line.starts_with('#'))
                .map(|line| line.trim_start_matches('#').trim())
                .find(|heading| heading.to_lowercase() == anchor)
                .unwrap_or_else(|| panic!("no heading in {path} for the runbook anchor #{anchor}"));
            assert!(
                heading.contains(alert),
                "{alert} links to the runbook section {heading:?}, which does not name it"
            );
            anchors += 1;
        }
    }
    assert_eq!(
        anchors,
        rules.matches("- alert:").count(),
        "every rule carries a runbook_url"
    );
}
