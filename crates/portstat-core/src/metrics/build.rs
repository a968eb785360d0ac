//! Which exporter wrote the exposition.

use crate::exposition::MetricFamily;

use super::Family;
use crate::status::Build;

/// Writes the build family.
pub fn render(build: &Build, out: &mut Vec<MetricFamily>) {
    let mut family = Family::new(
        "portstat_build_info",
        "A constant 1, labelled with the version and source revision of the exporter.",
        &[],
    );
    family.gauge(
        &[("version", build.version), ("revision", build.revision)],
        1.0,
    );
    family.finish(out);
}
