use super::*;

pub(super) fn sample_report() -> Report {
    let mut r = Report::default();
    let mut put = |id: &str, mode: Mode, v: &[f64]| {
        r.figures
            .entry(id.to_owned())
            .or_default()
            .insert(mode, Spread::of(v).unwrap());
    };
    put("throughput_gbit_s", Mode::NoMesh, &[10.0, 12.0, 11.0]);
    put("throughput_gbit_s", Mode::Envoy, &[2.0, 2.0, 2.0]);
    put("throughput_gbit_s", Mode::Ambient, &[3.0, 2.5, 3.5]);
    put("closed_p99_us", Mode::NoMesh, &[100.0]);
    put("closed_p99_us", Mode::Envoy, &[600.0]);
    put("closed_p99_us", Mode::Ambient, &[350.0]);
    put(&rss_id(10), Mode::Envoy, &[400.0]);
    put(&rss_id(10), Mode::Ambient, &[30.0]);
    put(&rss_id(50), Mode::Envoy, &[2000.0]);
    put(&rss_id(50), Mode::Ambient, &[150.0]);
    r.latency_curves
        .entry("closed".into())
        .or_default()
        .insert(Mode::Envoy, vec![(0.0, 400.0), (0.5, 500.0), (0.99, 600.0)]);
    r.meta.modes = vec![Mode::NoMesh, Mode::Envoy, Mode::Ambient];
    r.meta
        .not_run
        .insert("sidecar".into(), "not on main yet".into());
    r
}

#[test]
fn ratios_are_of_medians() {
    let r = sample_report();
    assert_eq!(
        r.ratio("throughput_gbit_s", Mode::Ambient, Mode::Envoy),
        Some(1.5)
    );
    assert_eq!(
        r.ratio("throughput_gbit_s", Mode::Ambient, Mode::NoMesh),
        Some(3.0 / 11.0)
    );
    assert_eq!(
        r.ratio("throughput_gbit_s", Mode::Ambient, Mode::Sidecar),
        None
    );
    assert_eq!(r.added("closed_p99_us", Mode::Envoy), Some(500.0));
}

#[test]
fn targets_use_the_largest_pod_count_and_added_latency() {
    let r = sample_report();
    assert_eq!(r.pod_counts(), vec![10, 50]);
    let t = r.targets();
    assert_eq!(t.len(), 3);
    assert!(t[0].name.contains("50 pods"));
    assert_eq!(t[0].value, Some(0.075));
    assert_eq!(t[0].met, Some(true));
    // (350-100)/(600-100) = 0.5
    assert_eq!(t[1].value, Some(0.5));
    assert_eq!(t[1].met, Some(true));
    assert_eq!(t[2].value, Some(1.5));
    assert_eq!(t[2].met, Some(true));
}

#[test]
fn missing_modes_leave_targets_unevaluated() {
    let mut r = sample_report();
    r.figures.values_mut().for_each(|m| {
        m.remove(&Mode::Envoy);
    });
    for t in r.targets() {
        assert_eq!((t.value, t.met), (None, None), "{}", t.name);
    }
}

#[test]
fn missed_targets_are_marked_missed() {
    let mut r = sample_report();
    r.figures
        .get_mut("throughput_gbit_s")
        .unwrap()
        .insert(Mode::Ambient, Spread::of(&[2.2]).unwrap());
    let t = r.targets();
    assert_eq!(t[2].met, Some(false));
}

#[test]
fn json_carries_figures_ratios_and_targets() {
    let j = sample_report().to_json();
    assert_eq!(j["figures"]["throughput_gbit_s"]["ambient"]["median"], 3.0);
    assert_eq!(j["figures"]["throughput_gbit_s"]["ambient"]["min"], 2.5);
    assert_eq!(j["figures"]["throughput_gbit_s"]["ambient"]["max"], 3.5);
    assert_eq!(j["ratios"]["throughput_gbit_s"]["ambient"]["vs_envoy"], 1.5);
    assert_eq!(j["ratios"]["closed_p99_us"]["ambient"]["added_us"], 250.0);
    assert!(j["ratios"]["throughput_gbit_s"]["ambient"]
        .get("vs_sidecar")
        .is_none());
    assert_eq!(j["targets"].as_array().unwrap().len(), 3);
    // Round trip: the JSON reads back into the same report.
    let back: Report = serde_json::from_value(j).unwrap();
    assert_eq!(back, sample_report());
}

#[test]
fn per_pod_count_figures_have_definitions() {
    assert_eq!(figure_def(&rss_id(25)).unwrap().unit, "MiB");
    assert_eq!(figure_def(&startup_id(25)).unwrap().unit, "s");
    assert!(figure_def(&pss_id(25)).unwrap().label.contains("PSS"));
    assert!(figure_def("closed_p99_us").unwrap().latency);
    assert!(figure_def("nonsense").is_none());
}

#[test]
fn json_document_reads_back_into_the_same_report() {
    let r = sample_report();
    let back = Report::from_json(&r.to_json()).expect("reads back");
    assert_eq!(back, r);
}
