//! What GIS tools see: GDAL (Debian's `gdal-bin`, installed by
//! `scripts/test`) reads a release's GeoJSON and CSV as they are served, and
//! draws its XYZ tiles through a TMS description, over real HTTP.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use chrono::NaiveDate;
use hexflow::server::{AppState, ServeConfig};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

fn tool(name: &str) -> PathBuf {
    let p = Path::new("/usr/bin").join(name);
    assert!(
        p.exists(),
        "the GDAL test needs {}: run ./scripts/test, which installs Debian's gdal-bin",
        p.display()
    );
    p
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run a GDAL tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

#[test]
fn gdal_reads_the_geojson_the_csv_and_the_tiles_as_served() {
    let (ogrinfo, gdal_translate, gdalinfo) = (tool("ogrinfo"), tool("gdal_translate"), tool("gdalinfo"));
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let policy = hexflow::policy::Policy::load(&fixture("tiny.toml")).expect("policy");
    let grid = policy.load_grid().expect("grid");
    let day: NaiveDate = "2025-03-03".parse().expect("day");
    let sim = dir.path().join("sim");
    hexflow::simulate::simulate(&grid, day, day, &sim, hexflow::simulate::Format::Csv, 7, None).expect("simulate");
    let ingestor = hexflow::ingest::Ingestor::new(policy.clone(), &data).expect("ingestor");
    for e in std::fs::read_dir(&sim).expect("sim").flatten() {
        if e.path().extension().is_some_and(|x| x == "csv") {
            ingestor.ingest(&e.path(), Default::default()).expect("ingest");
        }
    }
    let releaser = hexflow::release::Releaser::new(policy.clone(), &data).expect("releaser");
    let report = hexflow::release::publish::publish(&releaser, &data).expect("publish");
    assert_eq!(report.new, 1);

    // The server on a real port.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let state = Arc::new(AppState::new(vec![policy], ServeConfig::new(&data)).expect("state"));
    let (tx, rx) = std::sync::mpsc::channel();
    let st = state.clone();
    rt.spawn(async move {
        hexflow::server::serve(st, "127.0.0.1:0".parse().expect("addr"), move |a| {
            let _ = tx.send(a);
        })
        .await
        .expect("serve");
    });
    let addr = rx.recv().expect("bound");
    let base = format!("http://{addr}");
    let id = std::fs::read_dir(data.join("releases/tiny"))
        .expect("releases")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("r-"))
        .expect("a release");

    // GeoJSON over HTTP: every hex a valid polygon with its properties.
    let geojson = format!("{base}/api/v1/releases/{id}/values?format=geojson&bin=9");
    let info = run(Command::new(&ogrinfo).args(["-ro", "-al", "-so", &geojson]));
    assert!(info.contains("Geometry: Polygon"), "{info}");
    assert!(info.contains("Feature Count:"), "{info}");
    for field in ["hex_id", "local_start", "value", "ci95", "estimate"] {
        assert!(info.contains(&format!("{field}:")), "no field {field}: {info}");
    }
    // The CSV over HTTP, with its coordinates as points.
    let csv = format!("CSV:/vsicurl/{base}/api/v1/releases/{id}/values?format=csv&bin=9");
    let csv_info = run(Command::new(&ogrinfo).args([
        "-ro",
        "-al",
        "-so",
        "-oo",
        "X_POSSIBLE_NAMES=lon",
        "-oo",
        "Y_POSSIBLE_NAMES=lat",
        &csv,
    ]));
    assert!(csv_info.contains("Geometry: Point"), "{csv_info}");

    // The tiles through a TMS description at zoom 14 around site A.
    let (x, y) = hexflow::render::mercator_px(5.385, 43.29, 14.0);
    let (tx, ty) = ((x / 256.0) as i64, (y / 256.0) as i64);
    let xml = format!(
        r#"<GDAL_WMS>
  <Service name="TMS"><ServerUrl>{base}/api/v1/releases/{id}/tiles/${{z}}/${{x}}/${{y}}.png?bin=9</ServerUrl></Service>
  <DataWindow><UpperLeftX>-20037508.34</UpperLeftX><UpperLeftY>20037508.34</UpperLeftY>
    <LowerRightX>20037508.34</LowerRightX><LowerRightY>-20037508.34</LowerRightY>
    <TileLevel>14</TileLevel><TileCountX>1</TileCountX><TileCountY>1</TileCountY><YOrigin>top</YOrigin></DataWindow>
  <Projection>EPSG:3857</Projection><BlockSizeX>256</BlockSizeX><BlockSizeY>256</BlockSizeY><BandsCount>4</BandsCount>
  <Cache><Path>{cache}</Path></Cache>
</GDAL_WMS>"#,
        // In the test's own folder: without a path GDAL caches in the
        // working directory (the repository).
        cache = dir.path().join("wms-cache").display()
    );
    let xml_path = dir.path().join("tiles.xml");
    std::fs::write(&xml_path, xml).expect("write xml");
    let tinfo = run(Command::new(&gdalinfo).arg(&xml_path));
    assert!(tinfo.contains("Band 4"), "{tinfo}");
    let out = dir.path().join("tile.tif");
    run(Command::new(&gdal_translate).args([
        "-q",
        "-srcwin",
        &(tx * 256).to_string(),
        &(ty * 256).to_string(),
        "256",
        "256",
        xml_path.to_str().expect("utf8"),
        out.to_str().expect("utf8"),
    ]));
    let stats = run(Command::new(&gdalinfo).args(["-stats", out.to_str().expect("utf8")]));
    // The alpha band (4) has opaque pixels: hexes were drawn.
    let band4 = stats.split("Band 4").nth(1).unwrap_or_default();
    let max = band4
        .split("Maximum=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(max > 0.0, "no opaque pixel in the tile GDAL read: {stats}");
}
