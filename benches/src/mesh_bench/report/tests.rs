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

/// The sample run with the TLS relay floor: perf figures only, no memory
/// or start-up figure (it has no per-pod proxies).
fn floor_report() -> Report {
    let mut r = sample_report();
    let mut put = |id: &str, v: &[f64]| {
        r.figures
            .entry(id.to_owned())
            .or_default()
            .insert(Mode::TlsRelay, Spread::of(v).unwrap());
    };
    put("throughput_gbit_s", &[2.6, 2.4, 2.5]);
    put("closed_p99_us", &[300.0, 280.0, 320.0]);
    r.latency_curves.get_mut("closed").unwrap().insert(
        Mode::TlsRelay,
        vec![(0.0, 200.0), (0.5, 250.0), (0.99, 300.0)],
    );
    r.meta.modes = vec![Mode::NoMesh, Mode::Envoy, Mode::TlsRelay, Mode::Ambient];
    r
}

#[test]
fn floor_ratios_place_the_floor_between_ambient_and_envoy() {
    let r = floor_report();
    let got: Vec<(String, Option<f64>)> = r
        .floor_ratios()
        .into_iter()
        .map(|f| (f.id, f.value))
        .collect();
    // Medians: throughput no mesh 11, Envoy 2, floor 2.5, ambient 3;
    // closed p99 no mesh 100, Envoy 600 (+500), floor 300 (+200), ambient
    // 350 (+250).
    let want = [
        ("throughput_ambient_vs_tls_relay", 3.0 / 2.5),
        ("throughput_tls_relay_vs_envoy", 2.5 / 2.0),
        ("added_closed_p99_ambient_vs_tls_relay", 250.0 / 200.0),
        ("added_closed_p99_tls_relay_vs_envoy", 200.0 / 500.0),
    ];
    assert_eq!(got.len(), want.len());
    for ((id, value), (want_id, want_value)) in got.iter().zip(want) {
        assert_eq!(id, want_id);
        assert_eq!(*value, Some(want_value), "{id}");
    }
    // The targets stay ambient vs Envoy, whatever the floor measured.
    assert_eq!(r.targets(), sample_report().targets());
}

#[test]
fn floor_ratios_are_unevaluated_without_the_floor() {
    for f in sample_report().floor_ratios() {
        assert_eq!(f.value, None, "{}", f.id);
    }
    // And without Envoy, only the ambient-vs-floor ones are.
    let mut r = floor_report();
    r.figures.values_mut().for_each(|m| {
        m.remove(&Mode::Envoy);
    });
    let set: Vec<bool> = r.floor_ratios().iter().map(|f| f.value.is_some()).collect();
    assert_eq!(set, [true, false, true, false]);
}

#[test]
fn json_has_the_floor_ratios_and_no_memory_entry_for_the_floor() {
    let r = floor_report();
    let j = r.to_json();
    assert_eq!(
        j["figures"]["throughput_gbit_s"]["tls_relay"]["median"],
        2.5
    );
    assert_eq!(
        j["ratios"]["throughput_gbit_s"]["ambient"]["vs_tls_relay"],
        3.0 / 2.5
    );
    assert_eq!(
        j["ratios"]["throughput_gbit_s"]["tls_relay"]["vs_envoy"],
        1.25
    );
    assert_eq!(j["ratios"]["closed_p99_us"]["tls_relay"]["added_us"], 200.0);
    let floor = j["floor_ratios"].as_array().unwrap();
    assert_eq!(floor.len(), 4);
    assert_eq!(floor[3]["id"], "added_closed_p99_tls_relay_vs_envoy");
    assert_eq!(floor[3]["value"], 0.4);
    // Absent, not zero.
    for n in [10, 50] {
        assert!(j["figures"][rss_id(n)].get("tls_relay").is_none());
    }
    assert_eq!(Report::from_json(&j).unwrap(), r);
}

#[test]
fn a_mode_absent_from_the_memory_figures_renders_as_not_measured() {
    let page = html::render(&floor_report());
    assert!(page.contains("<h2>The TLS relay floor</h2>"));
    assert!(page
        .contains("TLS relay floor single-stream throughput / Envoy sidecars'</td><td>1.25</td>"));
    assert!(page.contains("<th>÷ TLS relay (floor)</th>"));
    // One "not measured" row per per-pod-count figure (RSS at 10 and 50).
    assert_eq!(page.matches("not measured: no per-pod proxies").count(), 2);
    // Both charts draw; the floor is a line in the latency chart only.
    let svgs: Vec<&str> = page
        .split("<svg")
        .skip(1)
        .map(|s| s.split("</svg>").next().unwrap())
        .collect();
    assert_eq!(svgs.len(), 2, "closed-loop latency + memory");
    assert!(svgs[0].contains("TLS relay (floor)"));
    assert!(!svgs[1].contains("TLS relay (floor)"));
    assert_eq!(svgs[1].matches("<polyline").count(), 2, "Envoy and ambient");
    assert!(page.contains("is not measured here"));
    assert!(!page.contains("NaN"));
    // Without the floor, no floor section, note or row.
    let plain = html::render(&sample_report());
    assert!(!plain.contains("TLS relay floor"));
    assert!(!plain.contains("not measured: no per-pod proxies"));
}
