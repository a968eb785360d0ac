//! Which exporter wrote the exposition.

use prometheus::proto::MetricFamily;

use super::Family;
use crate::status::{REVISION, VERSION};

/// Writes the build family.
pub fn render(out: &mut Vec<MetricFamily>) {
    let mut build = Family::new(
        "portstat_build_info",
        "A constant 1, labelled with the version and source revision of the exporter.",
        &[],
    );
    build.gauge(&[("version", VERSION), ("revision", REVISION)], 1.0);
    build.finish(out);
}
