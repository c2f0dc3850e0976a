//! Presence: people per period, segment and origin (DESIGN.md "People and
//! visitors"). Deliveries are checked whole against the policy's public
//! lists; releases key every value by those lists, never by the data; the
//! noise is calibrated to one device-day per period.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hexflow::policy::Policy;
use hexflow::release::{ReleaseSpec, Releaser, Unit};
use hexflow::vocab::{By, Metric};

const BIN: &str = env!("CARGO_BIN_EXE_hexflow");

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

fn policy() -> Policy {
    Policy::load(&fixture("tiny-zones.toml")).expect("policy")
}

fn ingest(data: &Path, file: &Path) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(data)
        .args(["ingest", "--policy"])
        .arg(fixture("tiny-zones.toml"))
        .arg(file)
        .env_remove("HEXFLOW_FAILPOINT")
        .output()
        .expect("run hexflow")
}

const HEADER: &str = "cell_id,day,period,segment,origin,devices\n";

/// Two days of presence with distinctive counts: every cell, both periods,
/// residents (local), tourists from 13 and DE, excursionists from 83 and
/// 75; a count of `base + small offsets` so that no two values are equal.
fn good_rows(base: u32) -> String {
    let mut s = String::from(HEADER);
    let cells = ["A-1", "A-2", "A-3", "B-0", "C-1"];
    for (d, day) in ["2025-03-12", "2025-03-13"].iter().enumerate() {
        for (c, cell) in cells.iter().enumerate() {
            for (p, period) in ["day", "night"].iter().enumerate() {
                for (k, (segment, origin)) in [
                    ("resident", "local"),
                    ("tourist", "13"),
                    ("tourist", "DE"),
                    ("excursionist", "83"),
                    ("excursionist", "75"),
                ]
                .iter()
                .enumerate()
                {
                    if *period == "night" && *segment == "excursionist" {
                        continue;
                    }
                    let v = base + (d * 1000 + c * 100 + p * 10 + k) as u32;
                    s.push_str(&format!("{cell},{day},{period},{segment},{origin},{v}\n"));
                }
            }
        }
    }
    s
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_presence_file_with_an_unknown_code_a_double_count_or_a_partial_day_is_refused_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let store = || hexflow::store::CountStore::new(&data, "tiny").snapshot();
    let good = good_rows(43_210);
    let counts: Vec<String> = good
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().expect("count").to_string())
        .collect();
    let lines: Vec<&str> = good.lines().collect();
    let today = chrono::Utc::now().with_timezone(&chrono_tz::Europe::Paris).date_naive();
    // (what is wrong, the file, the line, column and reason expected)
    let replace_line = |n: usize, with: String| {
        let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        l[n - 1] = with;
        l.join("\n") + "\n"
    };
    let cases = [
        (
            "unknown segment",
            replace_line(5, "A-1,2025-03-12,day,commuter,local,43190".into()),
            5,
            "segment",
            "unknown segment",
        ),
        (
            "unknown origin",
            replace_line(6, "A-1,2025-03-12,day,tourist,ZZ,43191".into()),
            6,
            "origin",
            "unknown origin",
        ),
        (
            "unknown period",
            replace_line(3, "A-1,2025-03-12,evening,resident,local,43192".into()),
            3,
            "period",
            "unknown period",
        ),
        (
            "a cell counted twice in one period",
            // Line 2 again, with another count, at the end.
            format!("{good}A-1,2025-03-12,day,resident,local,43193\n"),
            lines.len() + 1,
            "cell_id+period+segment+origin+day",
            "duplicate of line 2",
        ),
        (
            "a timestamp instead of a local day",
            replace_line(4, "A-1,2025-03-12T00:00:00+01:00,day,tourist,DE,43194".into()),
            4,
            "day",
            "not a local date",
        ),
        (
            "a day that is not over",
            replace_line(4, format!("A-1,{today},day,tourist,DE,43195")),
            4,
            "day",
            "not a whole local day yet",
        ),
    ];
    for (what, content, line, column, reason) in cases {
        let before = store();
        let f = dir.path().join("presence.csv");
        std::fs::write(&f, &content).expect("write");
        let out = ingest(&data, &f);
        let err = stderr(&out);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(err.contains(reason), "{what}: expected {reason:?} in {err}");
        assert!(
            err.contains(&format!("line {line}")),
            "{what}: expected line {line} in {err}"
        );
        assert!(err.contains("nothing was stored"), "{what}: {err}");
        assert_eq!(store(), before, "{what}: the store changed");
        // No count, no code outside the public lists in the message.
        let odd = [
            "43190", "43191", "43192", "43193", "43194", "43195", "99999", "ZZ", "commuter", "evening",
        ];
        for leak in counts.iter().map(String::as_str).chain(odd) {
            assert!(!err.contains(leak), "{what}: {leak} quoted in {err}");
        }
        let q = std::fs::read_dir(data.join("quarantine/tiny"))
            .expect("quarantine dir")
            .flatten()
            .map(|e| std::fs::read_to_string(e.path()).expect("read"))
            .find(|q| q.contains(&format!("\n{line},{column},")));
        assert!(q.is_some(), "{what}: no quarantine row for line {line} column {column}");
    }
    // The good file lands.
    let f = dir.path().join("presence-good.csv");
    std::fs::write(&f, &good).expect("write");
    let out = ingest(&data, &f);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        store()
            .keys()
            .any(|p| p.to_string_lossy().contains("presence/g000001-2025-03.parquet"))
    );
}

fn ingest_good(data: &Path, base: u32) {
    let f = data.parent().expect("parent").join(format!("presence-{base}.csv"));
    std::fs::write(&f, good_rows(base)).expect("write");
    let out = ingest(data, &f);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn spec(by: By, bin: &str, from: &str, to: &str, rho: f64) -> ReleaseSpec {
    ReleaseSpec {
        dataset: "tiny".into(),
        audience: "planners".into(),
        metric: Metric::Presence,
        unit: Unit::Zone,
        res: 0,
        bin: bin.parse().expect("bin"),
        period: Some("day".into()),
        by: Some(by),
        from: from.parse().expect("from"),
        to: to.parse().expect("to"),
        budget: hexflow::privacy::mechanism::Budget::Rho(rho),
    }
}

fn today() -> chrono::NaiveDate {
    "2026-01-01".parse().expect("today")
}

#[test]
fn presence_releases_key_values_by_the_public_lists_and_charge_one_device_day_per_period() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    ingest_good(&data, 1_000);
    let releaser = Releaser::new(policy(), &data).expect("releaser");
    let zones = releaser.grid.zones.len();
    let read =
        |o: &hexflow::release::Outcome| hexflow::table::read_parquet(&o.dir.join("values.parquet")).expect("values");

    // By segment and origin, two daily bins: zones × 3 segments × 5 origin
    // groups (four named and `other`) per bin, whether or not the data
    // has them (no excursionist from Île-de-France at night, none from
    // abroad at all here, still keyed).
    let o = releaser
        .release(
            &spec(By::SegmentOrigin, "1d", "2025-03-12", "2025-03-13", 0.25),
            today(),
        )
        .expect("release");
    let m = &o.manifest;
    assert_eq!(m.keys, zones * 3 * 5);
    assert_eq!(m.bins, 2);
    let pm = m.presence.as_ref().expect("presence manifest");
    assert_eq!(pm.period, "day");
    assert_eq!((pm.period_from.as_str(), pm.period_to.as_str()), ("08:00", "20:00"));
    assert!(
        pm.groups
            .contains(&("excursionist".to_string(), "Île-de-France".to_string()))
    );
    assert!(pm.groups.contains(&("tourist".to_string(), "other".to_string())));
    assert_eq!(pm.expansion["resident"], 0.4);
    // Sensitivity: one device-day moves one value by 1 (cells) or one row
    // of W (zones), whatever the window.
    let w2_max = 1.0;
    match m.placement {
        hexflow::privacy::sensitivity::Placement::Cell => assert_eq!(m.sensitivity.l2, 1.0),
        hexflow::privacy::sensitivity::Placement::Hex => assert!(m.sensitivity.l2 <= w2_max + 1e-12),
    }
    assert_eq!(m.sensitivity.l1, 1.0);
    assert!((m.noise_sd - m.sensitivity.l2 / (2.0 * m.rho).sqrt()).abs() < 0.02 * m.noise_sd);

    let df = read(&o);
    assert_eq!(df.height(), m.values);
    for c in [
        "zone_id",
        "period",
        "segment",
        "origin",
        "bin_start",
        "value",
        "ci95",
        "estimate",
        "people",
        "people_ci95",
    ] {
        assert!(df.column(c).is_ok(), "no column {c}");
    }
    // Truth per (day, segment, origin group) over all zones, from the rows
    // written above: every cell lies in a zone or in none, so the zones'
    // sum is at most the truth; the check is per value below.
    let est = df.column("estimate").expect("estimate").f64().expect("f64").clone();
    let seg = df.column("segment").expect("segment").str().expect("str").clone();
    let org = df.column("origin").expect("origin").str().expect("str").clone();
    let sd = m.noise_sd;
    // Keys the data never has are pure noise around 0: |N| < 6σ (false
    // failure < 2e-9 per value, < 1e-7 for this release).
    for i in 0..df.height() {
        let (s, g) = (seg.get(i).expect("s"), org.get(i).expect("o"));
        let impossible = g == "other" || (s == "resident" && g != "local") || (s != "resident" && g == "local");
        if impossible {
            assert!(est.get(i).expect("e").abs() < 6.0 * sd, "{s}/{g}: {:?}", est.get(i));
        }
    }
    // People: estimate / factor (E has its own factor for residents;
    // excursionists have none).
    let zone = df.column("zone_id").expect("zone").str().expect("str").clone();
    let people = df.column("people").expect("people").f64().expect("f64").clone();
    for i in 0..df.height() {
        let (s, z, e) = (seg.get(i).expect("s"), zone.get(i).expect("z"), est.get(i).expect("e"));
        let factor = match (s, z) {
            ("resident", "E") => Some(0.5),
            ("resident", _) => Some(0.4),
            ("tourist", _) => Some(0.25),
            _ => None,
        };
        match factor {
            Some(f) => assert!((people.get(i).expect("people") - e / f).abs() < 1e-9),
            None => assert!(people.get(i).is_none(), "{s}: people without a factor"),
        }
    }
    // Truth recovered: residents of the whole window (monthly bin would
    // need whole months; a weekly-free check): by segment, daily, the sum
    // over zones of residents on 2025-03-12 is within 6σ·√zones of the
    // rows of cells inside the zones.
    let o = releaser
        .release(&spec(By::Segment, "1d", "2025-03-12", "2025-03-12", 0.25), today())
        .expect("release");
    assert_eq!(o.manifest.keys, zones * 3);
    let df = read(&o);
    let seg = df.column("segment").expect("segment").str().expect("str").clone();
    let est = df.column("estimate").expect("estimate").f64().expect("f64").clone();
    let residents: f64 = (0..df.height())
        .filter(|i| seg.get(*i) == Some("resident"))
        .map(|i| est.get(i).expect("e"))
        .sum();
    let weights = releaser.weights_for(Unit::Zone, 0).expect("zone weights");
    let truth: f64 = weights
        .entries
        .iter()
        .map(|e| {
            let c = ["A-1", "A-2", "A-3", "B-0", "C-1"]
                .iter()
                .position(|c| *c == weights.cell_ids[e.cell as usize])
                .expect("cell");
            e.weight * f64::from(1_000 + (c * 100) as u32)
        })
        .sum();
    let bound = 6.0 * o.manifest.noise_sd * (zones as f64).sqrt() * 2.0;
    assert!((residents - truth).abs() < bound, "{residents} vs {truth} ± {bound}");
}

#[test]
fn presence_specs_outside_the_policy_are_refused_before_any_charge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    ingest_good(&data, 2_000);
    let releaser = Releaser::new(policy(), &data).expect("releaser");
    let refused = |s: ReleaseSpec, why: &str| {
        let e = releaser.release(&s, today()).expect_err("refused").to_string();
        assert!(e.contains(why), "expected {why:?} in {e}");
    };
    refused(
        spec(By::Segment, "1h", "2025-03-12", "2025-03-12", 0.1),
        "1d, 1w or 1mo",
    );
    let mut s = spec(By::Segment, "1d", "2025-03-12", "2025-03-12", 0.1);
    s.period = Some("evening".into());
    refused(s, "unknown period");
    let mut s = spec(By::Segment, "1d", "2025-03-12", "2025-03-12", 0.1);
    s.period = None;
    refused(s, "needs a period");
    let mut s = spec(By::Segment, "1d", "2025-03-12", "2025-03-12", 0.1);
    s.metric = Metric::Footfall;
    refused(s, "presence releases only");
    // A day without presence data: refused, nothing charged.
    refused(
        spec(By::Segment, "1d", "2025-03-12", "2025-03-14", 0.1),
        "no presence data",
    );
    let mut ledger = hexflow::privacy::ledger::Ledger::open(&hexflow::privacy::ledger::LedgerUrl::in_data_dir(&data))
        .expect("ledger");
    assert!(
        ledger.spend("tiny").expect("spend").is_empty(),
        "a refused spec was charged"
    );
}

#[test]
fn simulated_presence_ingests_as_is_and_its_truth_adds_up_to_the_delivery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = policy();
    let grid = policy.load_grid().expect("grid");
    let sim = dir.path().join("sim");
    let report = hexflow::simulate::simulate(
        &grid,
        "2025-07-05".parse().expect("from"),
        "2025-07-06".parse().expect("to"),
        &sim,
        hexflow::simulate::Format::Csv,
        3,
        policy.spec.presence.as_ref(),
    )
    .expect("simulate");
    assert!(report.presence_rows > 0);
    let file = sim.join("presence-2025-07.csv");
    let text = std::fs::read_to_string(&file).expect("presence file");
    let p = policy.spec.presence.as_ref().expect("presence");
    let mut sums: std::collections::BTreeMap<(String, String, String), u64> = Default::default();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (day, period, segment, origin, devices) = (f[1], f[2], f[3], f[4], f[5]);
        assert!(p.accepts_origin(origin), "{origin} is not in the policy's lists");
        // Day visitors are, by definition, not there at night.
        assert!(!(segment == "excursionist" && period == "night"), "{line}");
        assert!(segment != "resident" || origin == "local", "{line}");
        *sums.entry((day.into(), period.into(), segment.into())).or_default() += devices.parse::<u64>().expect("count");
    }
    let truth: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sim.join("events.json")).expect("events")).expect("json");
    let daily = truth["presence_daily"].as_array().expect("presence_daily");
    assert_eq!(daily.len(), sums.len());
    for t in daily {
        let key = (
            t["day"].as_str().expect("day").to_string(),
            t["period"].as_str().expect("period").to_string(),
            t["segment"].as_str().expect("segment").to_string(),
        );
        assert_eq!(t["devices"].as_u64(), sums.get(&key).copied(), "{key:?}");
    }
    // Residents at night: the grid's 2,000 devices less those away on
    // holiday (4-22 %), Poisson around that (6σ ≈ 270).
    let night = sums[&("2025-07-05".to_string(), "night".to_string(), "resident".to_string())] as f64;
    assert!((1400.0..2100.0).contains(&night), "{night}");
    // The delivery lands whole.
    let out = ingest(&dir.path().join("data"), &file);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_parquet_delivery_with_a_date_column_lands_and_hexes_are_released_without_split() {
    use polars::prelude::*;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let day: chrono::NaiveDate = "2025-03-12".parse().expect("day");
    let cells = ["A-1", "A-2", "B-0", "C-1"];
    let n = cells.len() * 2;
    let mut df = df!(
        "cell_id" => cells.iter().flat_map(|c| [*c, *c]).collect::<Vec<_>>(),
        "day" => DateChunked::from_naive_date("day".into(), std::iter::repeat_n(day, n)).into_series(),
        "period" => std::iter::repeat_n("day", n).collect::<Vec<_>>(),
        "segment" => (0..n).map(|i| if i % 2 == 0 { "resident" } else { "tourist" }).collect::<Vec<_>>(),
        "origin" => (0..n).map(|i| if i % 2 == 0 { "local" } else { "DE" }).collect::<Vec<_>>(),
        "devices" => (0..n as u32).map(|i| 500 + i).collect::<Vec<_>>(),
    )
    .expect("frame");
    let file = dir.path().join("presence.parquet");
    let mut f = std::fs::File::create(&file).expect("create");
    hexflow::table::write_parquet(&mut df, &mut f).expect("write parquet");
    drop(f);
    let out = ingest(&data, &file);
    assert!(out.status.success(), "{}", stderr(&out));

    let releaser = Releaser::new(policy(), &data).expect("releaser");
    let mut s = spec(By::Nothing, "1d", "2025-03-12", "2025-03-12", 0.1);
    s.unit = Unit::Hex;
    s.res = 8;
    let o = releaser.release(&s, today()).expect("release");
    let w = releaser.weights(8).expect("weights");
    assert_eq!(o.manifest.keys, w.keys.len(), "one value per hex, segments summed");
    let w2_max = w
        .rows
        .values()
        .map(|r| r.iter().map(|e| e.weight * e.weight).sum::<f64>().sqrt())
        .fold(0.0, f64::max);
    let l2 = o.manifest.sensitivity.l2;
    assert!(l2 == 1.0 || (l2 - w2_max).abs() < 1e-12, "{l2} vs 1 or {w2_max}");
    let values = hexflow::table::read_parquet(&o.dir.join("values.parquet")).expect("values");
    let seg = values.column("segment").expect("segment").str().expect("str").clone();
    assert!(seg.iter().all(|s| s == Some("all")));
    // Residents and tourists have different factors, excursionists none:
    // no single factor turns the sum into people.
    assert_eq!(values.column("people").expect("people").null_count(), values.height());
    // The sum over hexes recovers what the cells put into them (a cell
    // outside the area puts nothing): within 6 sd of the summed noise
    // (independent draws on at most max(hexes, cells) values; false
    // failure < 2e-9).
    let est: f64 = values
        .column("estimate")
        .expect("e")
        .f64()
        .expect("f64")
        .iter()
        .flatten()
        .sum();
    let truth: f64 = cells
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let count = f64::from(500 + 2 * k as u32) + f64::from(501 + 2 * k as u32);
            let pos = w.cell_ids.iter().position(|x| x == c).expect("cell") as u32;
            count
                * w.rows
                    .get(&pos)
                    .map_or(0.0, |r| r.iter().map(|e| e.weight).sum::<f64>())
        })
        .sum();
    let n_noise = w.keys.len().max(w.cell_ids.len()) as f64;
    let bound = 6.0 * o.manifest.noise_sd * n_noise.sqrt();
    assert!((est - truth).abs() < bound, "{est} vs {truth} ± {bound}");
}

#[test]
fn simulating_presence_for_segments_the_model_does_not_know_is_refused_not_silently_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = policy();
    let grid = policy.load_grid().expect("grid");
    let mut p = policy.spec.presence.clone().expect("presence");
    p.segments = vec!["local".into(), "visitor".into()];
    let day = "2025-07-05".parse().expect("day");
    let e = hexflow::simulate::simulate(
        &grid,
        day,
        day,
        &dir.path().join("sim"),
        hexflow::simulate::Format::Csv,
        3,
        Some(&p),
    )
    .expect_err("refused");
    assert!(e.to_string().contains("none the simulator models"), "{e}");
}
