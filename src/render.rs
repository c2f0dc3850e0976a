//! Images of releases, drawn with plotters: a PNG map of the study area for
//! one bin, and XYZ raster tiles (Web Mercator, 256 px) for any web map.
//!
//! Only published (noisy, post-processed) values reach this module. The
//! colour scale is viridis (readable with the common colour-vision
//! deficiencies and in greyscale); values flagged `low` are drawn in a
//! neutral grey, not on the scale, so that a reader never reads a colour into
//! a number hexflow says is too uncertain to show.

use std::collections::HashMap;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::grid::Grid;

/// The font every label is drawn with (DejaVu Sans, embedded: plotters'
/// system-font path needs fontconfig on the host).
const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
const FONT_NAME: &str = "sans-serif";
/// Tile edge (px).
pub const TILE_PX: u32 = 256;
/// Largest map edge served (px).
pub const MAX_MAP_PX: u32 = 2400;
/// Narrowest map drawn (px).
pub const MIN_MAP_PX: u32 = 320;
/// Map widths are drawn in steps of this many px.
pub const MAP_WIDTH_STEP_PX: u32 = 160;

/// The width a map is drawn at for an asked `width`: clamped to
/// `MIN_MAP_PX..=MAX_MAP_PX` and rounded to the nearest step, so that a
/// client cannot make the server draw (and cache) more than 14 widths of
/// one bin.
pub fn map_width(width: u32) -> u32 {
    let w = width.clamp(MIN_MAP_PX, MAX_MAP_PX);
    let steps = (w - MIN_MAP_PX + MAP_WIDTH_STEP_PX / 2) / MAP_WIDTH_STEP_PX;
    (MIN_MAP_PX + steps * MAP_WIDTH_STEP_PX).min(MAX_MAP_PX)
}
/// Deepest tile zoom served.
pub const MAX_ZOOM: u8 = 18;
const LOW_GREY: RGBColor = RGBColor(200, 200, 200);
/// Tile background, made transparent when the PNG is written.
const KEY: RGBColor = RGBColor(255, 0, 254);

/// Errors of a drawing.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("drawing failed: {0}")]
    Draw(String),
    #[error("PNG encoding failed: {0}")]
    Png(#[from] png::EncodingError),
}

fn draw_err<E: std::fmt::Debug>(e: E) -> RenderError {
    RenderError::Draw(format!("{e:?}"))
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is part of the binary; a failure here is a build defect
        // and shows as missing labels, not as a crash.
        if plotters::style::register_font(FONT_NAME, FontStyle::Normal, FONT).is_err() {
            tracing::error!("embedded font could not be registered");
        }
    });
}

/// One hex to draw: its boundary (lon, lat), its value and its flag.
pub struct HexValue {
    pub boundary: Vec<(f64, f64)>,
    pub value: f64,
    pub low: bool,
    /// False where no cell reaches the hex: drawn as "no coverage".
    pub covered: bool,
}

/// Fill of hexes that no cell covers: near-white, unlike the grey of
/// "below threshold", so that "no data can exist here" never reads as
/// "too uncertain to show".
const NO_COVERAGE: RGBColor = RGBColor(250, 250, 250);

/// A number for people: at most `digits` significant digits, no trailing
/// zeros (0.3, not 0.29999999999999993; 1e-5 as 0.00001).
pub fn human_number(x: f64, digits: usize) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let magnitude = x.abs().log10().floor() as i32;
    let decimals = (digits as i32 - 1 - magnitude).max(0) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// The colour of `value` on a scale from 0 to `max`.
pub fn colour(value: f64, max: f64) -> RGBColor {
    let h = if max > 0.0 { (value / max).clamp(0.0, 1.0) } else { 0.0 };
    ViridisRGB.get_color(h as f32)
}

/// Web Mercator: (lon, lat) → global pixel coordinates at `zoom` (256 px
/// tiles), as used by OSM, Leaflet and MapLibre.
pub fn mercator_px(lon: f64, lat: f64, zoom: f64) -> (f64, f64) {
    let size = f64::from(TILE_PX) * 2f64.powf(zoom);
    let lat = lat.clamp(-85.051_128, 85.051_128).to_radians();
    let x = (lon + 180.0) / 360.0 * size;
    let y = (1.0 - (lat.tan() + 1.0 / lat.cos()).ln() / std::f64::consts::PI) / 2.0 * size;
    (x, y)
}

/// The inverse of [`mercator_px`]: (lon, lat) of global pixel coordinates.
pub fn mercator_lonlat(x: f64, y: f64, zoom: f64) -> (f64, f64) {
    let size = f64::from(TILE_PX) * 2f64.powf(zoom);
    let lon = x / size * 360.0 - 180.0;
    let lat = (std::f64::consts::PI * (1.0 - 2.0 * y / size))
        .sinh()
        .atan()
        .to_degrees();
    (lon, lat)
}

/// Does a polygon (lon, lat) reach into tile z/x/y or the margin drawn
/// around it? Mercator is monotone in lon and lat, so comparing boxes in
/// degrees is comparing them in pixels: no projection per hex.
pub fn touches_tile(boundary: &[(f64, f64)], (z, x, y): (u8, u32, u32)) -> bool {
    let (t, m, zf) = (f64::from(TILE_PX), f64::from(TILE_MARGIN_PX), f64::from(z));
    let (west, north) = mercator_lonlat(f64::from(x) * t - m, f64::from(y) * t - m, zf);
    let (east, south) = mercator_lonlat(f64::from(x + 1) * t + m, f64::from(y + 1) * t + m, zf);
    let (mut w, mut e, mut s, mut n) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (lon, lat) in boundary {
        (w, e, s, n) = (w.min(*lon), e.max(*lon), s.min(*lat), n.max(*lat));
    }
    e >= west && w <= east && n >= south && s <= north
}

/// The tile (x, y) ranges at `z` covering a lon/lat bounding box.
pub fn tile_range(bbox: [f64; 4], z: u8) -> ((u32, u32), (u32, u32)) {
    let (x0, y0) = mercator_px(bbox[0], bbox[3], f64::from(z));
    let (x1, y1) = mercator_px(bbox[2], bbox[1], f64::from(z));
    let t = f64::from(TILE_PX);
    let n = (1u32 << z) - 1;
    let clamp = |v: f64| (v / t).floor().clamp(0.0, f64::from(n)) as u32;
    ((clamp(x0), clamp(x1)), (clamp(y0), clamp(y1)))
}

/// What a map shows besides the hexes.
pub struct MapText<'a> {
    pub title: &'a str,
    /// Bin, privacy cost, error bar.
    pub caption: &'a [String],
    /// Unit of the values, for the legend.
    pub unit: &'a str,
}

/// A PNG of RGB pixels, `transparent`'s pixels made transparent. Indexed
/// (a palette of ≤ 256 colours, 1 byte a pixel) when the picture has so few
/// colours, which hex maps and tiles have: 4× less to compress than RGBA,
/// so a first tile is drawn faster and is smaller. Decoders expand it to
/// the same RGBA (transparent pixels (0, 0, 0, 0), the rest alpha 210).
fn encode_png(rgb: &[u8], (w, h): (u32, u32), transparent: Option<RGBColor>) -> Result<Vec<u8>, RenderError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_depth(png::BitDepth::Eight);
        let key = transparent.map(|k| [k.0, k.1, k.2]);
        if let Some((mut palette, indices)) = palette(rgb) {
            enc.set_color(png::ColorType::Indexed);
            // Filters predict smooth gradients; indices have none (the
            // PNG specification's advice for palettes).
            enc.set_filter(png::Filter::NoFilter);
            enc.set_deflate_compression(png::DeflateCompression::Level(PALETTE_ZLIB_LEVEL));
            if let Some(key) = key {
                // Transparent pixels are (0, 0, 0, 0): a resampling client
                // blends their colour in, and the key's magenta showed as
                // fringes along every edge.
                let alpha: Vec<u8> = palette
                    .chunks_exact_mut(3)
                    .map(|c| {
                        if c == key {
                            c.fill(0);
                            0
                        } else {
                            210
                        }
                    })
                    .collect();
                enc.set_trns(alpha);
            }
            enc.set_palette(palette);
            enc.write_header()?.write_image_data(&indices)?;
        } else if let Some(key) = key {
            enc.set_color(png::ColorType::Rgba);
            let mut rgba = vec![0u8; rgb.len() / 3 * 4];
            for (o, p) in rgba.chunks_exact_mut(4).zip(rgb.chunks_exact(3)) {
                if p != key {
                    o.copy_from_slice(&[p[0], p[1], p[2], 210]);
                }
            }
            enc.write_header()?.write_image_data(&rgba)?;
        } else {
            enc.set_color(png::ColorType::Rgb);
            enc.write_header()?.write_image_data(rgb)?;
        }
    }
    Ok(out)
}

/// zlib level of palette PNGs. Measured on first tiles (`hexflow bench
/// --serve`, zoom 13): level 3 draws 1,240 tiles/s at 5.8 KB, level 6 (the
/// default) 1,110 at 5.7 KB, png's fdeflate mode 2,650 at 8.8 KB. A tile is
/// drawn once and downloaded by every client, so bytes win the tie.
const PALETTE_ZLIB_LEVEL: u8 = 3;

/// RGB pixels as a palette (RGB triples) and one index a pixel, if they
/// have at most 256 colours.
fn palette(rgb: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut seen: HashMap<[u8; 3], u8> = HashMap::new();
    let mut palette = Vec::new();
    let mut indices = Vec::with_capacity(rgb.len() / 3);
    // Neighbouring pixels are mostly one colour: one hash lookup per run.
    let mut last: Option<([u8; 3], u8)> = None;
    for p in rgb.chunks_exact(3) {
        let c = [p[0], p[1], p[2]];
        let i = match last {
            Some((l, i)) if l == c => i,
            _ => {
                let i = match seen.get(&c) {
                    Some(&i) => i,
                    None => {
                        let i = u8::try_from(seen.len()).ok()?;
                        seen.insert(c, i);
                        palette.extend_from_slice(&c);
                        i
                    }
                };
                last = Some((c, i));
                i
            }
        };
        indices.push(i);
    }
    Some((palette, indices))
}

/// A PNG map of the whole study area: hexes, outline, landmarks, legend
/// and caption. `width_px` is clamped to `64..=MAX_MAP_PX`.
pub fn map_png(
    grid: &Grid,
    hexes: &[HexValue],
    max: f64,
    text: &MapText,
    width_px: u32,
) -> Result<Vec<u8>, RenderError> {
    register_font();
    let width = width_px.clamp(320, MAX_MAP_PX);
    let (zoom, (x0, y0), map_h) = frame(grid, width);
    let y1 = y0 + map_h;
    let header = 34.0;
    let footer = 40.0 + 18.0 * text.caption.len() as f64;
    let height = (header + (y1 - y0) + footer + 10.0).ceil() as u32;
    let mut buf = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let px = |lon: f64, lat: f64| {
            let (x, y) = mercator_px(lon, lat, zoom);
            ((x - x0 + 10.0).round() as i32, (y - y0 + header).round() as i32)
        };
        draw_hexes(&root, hexes, max, &px)?;
        for poly in &grid.area.0 {
            let ring: Vec<(i32, i32)> = poly.exterior().points().map(|p| px(p.x(), p.y())).collect();
            root.draw(&PathElement::new(ring, BLACK.stroke_width(2)))
                .map_err(draw_err)?;
        }
        // The most important landmarks, labelled; the rest as dots.
        let mut marks: Vec<&crate::grid::Landmark> = grid.landmarks.iter().collect();
        marks.sort_by(|a, b| b.weight.total_cmp(&a.weight));
        let label = ("sans-serif", 12).into_font().color(&BLACK);
        for (i, m) in marks.iter().enumerate() {
            let p = px(m.lon, m.lat);
            root.draw(&Circle::new(p, 3, BLACK.filled())).map_err(draw_err)?;
            root.draw(&Circle::new(p, 3, WHITE.stroke_width(1))).map_err(draw_err)?;
            if i < 12 {
                root.draw(&Text::new(m.name.clone(), (p.0 + 5, p.1 - 6), label.clone()))
                    .map_err(draw_err)?;
            }
        }
        root.draw(&Text::new(
            text.title.to_string(),
            (10, 8),
            ("sans-serif", 18).into_font().color(&BLACK),
        ))
        .map_err(draw_err)?;
        let legend_y = height as i32 - footer as i32 + 4;
        draw_legend(&root, (10, legend_y), (width as i32 / 2).min(360), max, text.unit)?;
        for (i, line) in text.caption.iter().enumerate() {
            root.draw(&Text::new(
                line.clone(),
                (10, legend_y + 36 + 18 * i as i32),
                ("sans-serif", 12).into_font().color(&BLACK),
            ))
            .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    encode_png(&buf, (width, height), None)
}

/// The Web Mercator zoom that fits the study area's width into `width`
/// px (10 px margins), the area's top-left in pixels at that zoom, and the
/// map's height.
fn frame(grid: &Grid, width: u32) -> (f64, (f64, f64), f64) {
    let bbox = crate::grid::bbox(&grid.area);
    let map_w = f64::from(width) - 20.0;
    let (ax0, _) = mercator_px(bbox[0], bbox[3], 0.0);
    let (ax1, _) = mercator_px(bbox[2], bbox[1], 0.0);
    let zoom = (map_w / (ax1 - ax0)).log2();
    let (x0, y0) = mercator_px(bbox[0], bbox[3], zoom);
    let (_, y1) = mercator_px(bbox[2], bbox[1], zoom);
    (zoom, (x0, y0), y1 - y0)
}

/// One flow line of a flow map.
pub struct FlowLine {
    pub from: (f64, f64),
    pub to: (f64, f64),
    pub trips: f64,
}

/// A flow's path from `a` to `b`: a quadratic curve bending to the right of
/// the direction of travel, so that the flows A→B and B→A are two arcs,
/// not one line drawn twice.
pub fn arc(a: (i32, i32), b: (i32, i32)) -> Vec<(i32, i32)> {
    let (ax, ay, bx, by) = (f64::from(a.0), f64::from(a.1), f64::from(b.0), f64::from(b.1));
    let (dx, dy) = (bx - ax, by - ay);
    // Screen y points down: (−dy, dx) is to the right of (dx, dy).
    let (cx, cy) = ((ax + bx) / 2.0 - 0.18 * dy, (ay + by) / 2.0 + 0.18 * dx);
    (0..=16)
        .map(|k| {
            let t = f64::from(k) / 16.0;
            let u = 1.0 - t;
            let x = u * u * ax + 2.0 * u * t * cx + t * t * bx;
            let y = u * u * ay + 2.0 * u * t * cy + t * t * by;
            (x.round() as i32, y.round() as i32)
        })
        .collect()
}

/// A map of flows between zones: zone outlines, an arc per flow from its
/// origin's centre to its destination's, bending to the right of travel (a
/// dot marks the destination), width proportional to volume; flows within a
/// zone as rings.
pub fn flow_map_png(grid: &Grid, flows: &[FlowLine], title: &str, caption: &[String]) -> Result<Vec<u8>, RenderError> {
    register_font();
    let width = 1000;
    let (zoom, (x0, y0), map_h) = frame(grid, width);
    let header = 34.0;
    let height = (header + map_h + 24.0 + 18.0 * caption.len() as f64).ceil() as u32;
    let max = flows.iter().map(|f| f.trips).fold(0.0, f64::max).max(1.0);
    let mut buf = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let px = |lon: f64, lat: f64| {
            let (x, y) = mercator_px(lon, lat, zoom);
            ((x - x0 + 10.0).round() as i32, (y - y0 + header).round() as i32)
        };
        for z in &grid.zones {
            for poly in &z.area.0 {
                let ring: Vec<(i32, i32)> = poly.exterior().points().map(|p| px(p.x(), p.y())).collect();
                root.draw(&Polygon::new(ring.clone(), RGBColor(244, 244, 244).filled()))
                    .map_err(draw_err)?;
                root.draw(&PathElement::new(ring, RGBColor(150, 150, 150)))
                    .map_err(draw_err)?;
            }
        }
        for poly in &grid.area.0 {
            let ring: Vec<(i32, i32)> = poly.exterior().points().map(|p| px(p.x(), p.y())).collect();
            root.draw(&PathElement::new(ring, BLACK.stroke_width(2)))
                .map_err(draw_err)?;
        }
        // Smallest first, so the largest flows are drawn on top.
        let mut order: Vec<&FlowLine> = flows.iter().collect();
        order.sort_by(|a, b| a.trips.total_cmp(&b.trips));
        for f in order {
            let w = (1.0 + 13.0 * f.trips / max).round() as u32;
            let colour = colour(f.trips, max);
            let (a, b) = (px(f.from.0, f.from.1), px(f.to.0, f.to.1));
            if a == b {
                root.draw(&Circle::new(a, 6 + w as i32, colour.stroke_width(w.min(6))))
                    .map_err(draw_err)?;
            } else {
                root.draw(&PathElement::new(arc(a, b), colour.stroke_width(w)))
                    .map_err(draw_err)?;
                root.draw(&Circle::new(b, (w as i32 / 2 + 3).max(4), colour.filled()))
                    .map_err(draw_err)?;
            }
        }
        root.draw(&Text::new(
            title.to_string(),
            (10, 8),
            ("sans-serif", 18).into_font().color(&BLACK),
        ))
        .map_err(draw_err)?;
        for (i, line) in caption.iter().enumerate() {
            root.draw(&Text::new(
                line.clone(),
                (10, (header + map_h) as i32 + 12 + 18 * i as i32),
                ("sans-serif", 12).into_font().color(&BLACK),
            ))
            .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    encode_png(&buf, (width, height), None)
}

fn draw_hexes<'a, DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    hexes: impl IntoIterator<Item = &'a HexValue>,
    max: f64,
    px: &dyn Fn(f64, f64) -> (i32, i32),
) -> Result<(), RenderError> {
    for h in hexes {
        let pts: Vec<(i32, i32)> = h.boundary.iter().map(|(lon, lat)| px(*lon, *lat)).collect();
        let fill = match (h.covered, h.low) {
            (false, _) => NO_COVERAGE,
            (true, true) => LOW_GREY,
            (true, false) => colour(h.value, max),
        };
        root.draw(&Polygon::new(pts.clone(), fill.filled())).map_err(draw_err)?;
        let mut ring = pts;
        if let Some(first) = ring.first().copied() {
            ring.push(first);
        }
        let edge = if h.covered {
            RGBColor(255, 255, 255).mix(0.35)
        } else {
            RGBColor(150, 150, 150).mix(0.8)
        };
        root.draw(&PathElement::new(ring, edge)).map_err(draw_err)?;
    }
    Ok(())
}

fn draw_legend<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    (x, y): (i32, i32),
    w: i32,
    max: f64,
    unit: &str,
) -> Result<(), RenderError> {
    let steps = 64;
    for i in 0..steps {
        let v = max * f64::from(i) / f64::from(steps - 1);
        let x0 = x + w * i / steps;
        let x1 = x + w * (i + 1) / steps;
        root.draw(&Rectangle::new([(x0, y), (x1, y + 12)], colour(v, max).filled()))
            .map_err(draw_err)?;
    }
    let font = ("sans-serif", 11).into_font().color(&BLACK);
    for k in 0..=4 {
        let v = max * f64::from(k) / 4.0;
        let tx = x + w * k / 4;
        root.draw(&PathElement::new(vec![(tx, y + 12), (tx, y + 16)], BLACK))
            .map_err(draw_err)?;
        let label = if k == 4 {
            format!("≥{v:.0}")
        } else {
            format!("{v:.0}")
        };
        root.draw(&Text::new(label, (tx - 6, y + 18), font.clone()))
            .map_err(draw_err)?;
    }
    root.draw(&Rectangle::new(
        [(x + w + 16, y), (x + w + 28, y + 12)],
        LOW_GREY.filled(),
    ))
    .map_err(draw_err)?;
    root.draw(&Text::new("below threshold", (x + w + 32, y), font.clone()))
        .map_err(draw_err)?;
    let x2 = x + w + 130;
    root.draw(&Rectangle::new([(x2, y), (x2 + 12, y + 12)], NO_COVERAGE.filled()))
        .map_err(draw_err)?;
    root.draw(&Rectangle::new([(x2, y), (x2 + 12, y + 12)], RGBColor(150, 150, 150)))
        .map_err(draw_err)?;
    root.draw(&Text::new(
        format!("no coverage   ·   {unit}"),
        (x2 + 16, y),
        font.clone(),
    ))
    .map_err(draw_err)?;
    Ok(())
}

/// An XYZ tile (`z/x/y`, 256 px, Web Mercator), transparent where no hex is.
/// `hexes` may be all of them; only those that [`touches_tile`] are drawn.
pub fn tile_png(hexes: &[HexValue], max: f64, (z, x, y): (u8, u32, u32)) -> Result<Vec<u8>, RenderError> {
    let hexes: Vec<&HexValue> = hexes.iter().filter(|h| touches_tile(&h.boundary, (z, x, y))).collect();
    let n = TILE_PX;
    // Drawn with a margin and cropped: plotters clips a hex's outline onto
    // the drawing area's border, which drew a 1-px line along every tile's
    // edge (a grid over the map). With the margin, the border lies outside
    // what is kept, and a tile's edge pixels equal its neighbour's.
    let m = TILE_MARGIN_PX;
    let w = n + 2 * m;
    let mut buf = vec![0u8; (w * w * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, w)).into_drawing_area();
        root.fill(&KEY).map_err(draw_err)?;
        let (ox, oy) = (
            f64::from(x) * f64::from(n) - f64::from(m),
            f64::from(y) * f64::from(n) - f64::from(m),
        );
        let px = |lon: f64, lat: f64| {
            let (gx, gy) = mercator_px(lon, lat, f64::from(z));
            ((gx - ox).round() as i32, (gy - oy).round() as i32)
        };
        draw_hexes(&root, hexes, max, &px)?;
        root.present().map_err(draw_err)?;
    }
    let (row, kept) = ((w * 3) as usize, (n * 3) as usize);
    // Row by row: a byte-wise iterator chain here was a quarter of a first
    // tile's time under load.
    let mut cropped = Vec::with_capacity(kept * n as usize);
    for r in m..m + n {
        let start = r as usize * row + (m * 3) as usize;
        cropped.extend_from_slice(&buf[start..start + kept]);
    }
    encode_png(&cropped, (n, n), Some(KEY))
}

/// Pixels drawn around a tile and cropped away.
const TILE_MARGIN_PX: u32 = 8;

/// One line of a chart, with its 95 % band.
pub struct Line {
    pub label: String,
    pub colour: RGBColor,
    /// (x, y, ci95) with x in the chart's unit.
    pub points: Vec<(f64, f64, f64)>,
}

/// Text around a chart.
pub struct ChartText<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    pub caption: &'a str,
}

/// A line chart with error bands (plotters), for the views.
pub fn chart_png(
    text: &ChartText,
    lines: &[Line],
    x_label: &dyn Fn(f64) -> String,
    (width, height): (u32, u32),
) -> Result<Vec<u8>, RenderError> {
    register_font();
    let (width, height) = (width.clamp(320, MAX_MAP_PX), height.clamp(200, MAX_MAP_PX));
    let all = lines.iter().flat_map(|l| l.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for (x, y, ci) in all {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y1 = y1.max(y + ci);
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 > 0.0 { y1 * 1.08 } else { 1.0 };
    let mut buf = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (body, foot) = root.split_vertically(height - 28);
        let mut chart = ChartBuilder::on(&body)
            .caption(text.title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(34)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, 0.0..y1)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_label_formatter(&|x| x_label(*x))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .y_desc(text.y_label)
            .label_style(("sans-serif", 12))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(draw_err)?;
        for l in lines {
            let mut band: Vec<(f64, f64)> = l.points.iter().map(|(x, y, ci)| (*x, y + ci)).collect();
            band.extend(l.points.iter().rev().map(|(x, y, ci)| (*x, (y - ci).max(0.0))));
            chart
                .draw_series(std::iter::once(Polygon::new(band, l.colour.mix(0.2).filled())))
                .map_err(draw_err)?;
            chart
                .draw_series(LineSeries::new(
                    l.points.iter().map(|(x, y, _)| (*x, *y)),
                    l.colour.stroke_width(2),
                ))
                .map_err(draw_err)?
                .label(l.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], l.colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(draw_err)?;
        foot.draw(&Text::new(
            text.caption.to_string(),
            (12, 6),
            ("sans-serif", 12).into_font().color(&BLACK),
        ))
        .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    encode_png(&buf, (width, height), None)
}

/// Okabe–Ito colours (distinguishable with the common colour-vision
/// deficiencies), for the lines of a chart.
pub const OKABE_ITO: [RGBColor; 4] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
];

#[cfg(test)]
mod number_tests {
    use super::human_number;

    #[test]
    fn numbers_read_as_people_write_them() {
        // Regression: captions showed ρ as 0.29999999999999993.
        assert_eq!(human_number(0.299_999_999_999_999_93, 4), "0.3");
        assert_eq!(human_number(0.2, 4), "0.2");
        assert_eq!(human_number(1e-5, 4), "0.00001");
        assert_eq!(human_number(0.123_456, 3), "0.123");
        assert_eq!(human_number(37.26, 3), "37.3");
        assert_eq!(human_number(1234.0, 3), "1234");
        assert_eq!(human_number(0.0, 3), "0");
    }
}

#[cfg(test)]
mod arc_tests {
    use super::arc;

    #[test]
    fn the_two_directions_of_a_flow_are_two_arcs() {
        let (a, b) = ((0, 0), (100, 0));
        let there = arc(a, b);
        let back = arc(b, a);
        assert_eq!((there[0], there[16]), (a, b));
        assert_eq!((back[0], back[16]), (b, a));
        // Going east, the arc bends south (screen y down: to the right);
        // coming back west, north: the midpoints are on opposite sides.
        assert!(there[8].1 > 5 && back[8].1 < -5, "{:?} {:?}", there[8], back[8]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mercator_matches_known_tiles() {
        // The Vieux-Port (43.295 N, 5.374 E) lies in OSM tile 12/2109/1500.
        let (x, y) = mercator_px(5.374, 43.295, 12.0);
        assert_eq!(((x / 256.0) as u32, (y / 256.0) as u32), (2109, 1500));
        // The origin and the antimeridian.
        let (x0, y0) = mercator_px(-180.0, 85.051_128, 0.0);
        assert!(x0.abs() < 1e-9 && y0.abs() < 1e-3);
    }

    #[test]
    fn colour_scale_is_monotone_in_lightness() {
        // Viridis goes from dark to light: the scale reads in greyscale.
        let luma = |c: RGBColor| 0.299 * f64::from(c.0) + 0.587 * f64::from(c.1) + 0.114 * f64::from(c.2);
        let l: Vec<f64> = (0..=10).map(|i| luma(colour(f64::from(i), 10.0))).collect();
        assert!(l.windows(2).all(|w| w[1] > w[0]), "{l:?}");
        assert_eq!(colour(50.0, 10.0), colour(10.0, 10.0));
    }
}

#[cfg(test)]
mod png_tests {
    use super::{RGBColor, encode_png};

    /// Decoded as a client decodes it: palettes and transparency expanded.
    fn decode(bytes: &[u8]) -> (png::ColorType, png::ColorType, Vec<u8>) {
        let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
        dec.set_transformations(png::Transformations::EXPAND);
        let mut reader = dec.read_info().expect("header");
        let stored = reader.info().color_type;
        let mut buf = vec![0; reader.output_buffer_size().expect("size")];
        let info = reader.next_frame(&mut buf).expect("frame");
        buf.truncate(info.buffer_size());
        (stored, info.color_type, buf)
    }

    /// `colours` distinct colours over 64×64 pixels, the key among them.
    fn picture(colours: usize, key: [u8; 3]) -> Vec<u8> {
        (0..64 * 64)
            .flat_map(|i: usize| match i % colours {
                0 => key,
                c => [(c % 251) as u8, (c / 251) as u8, 7],
            })
            .collect()
    }

    #[test]
    fn a_palette_png_decodes_to_the_pixels_an_rgba_png_would() {
        let key = RGBColor(255, 0, 255);
        for colours in [2usize, 256, 257, 3000] {
            let rgb = picture(colours, [key.0, key.1, key.2]);
            let (stored, shown, px) = decode(&encode_png(&rgb, (64, 64), Some(key)).expect("png"));
            // At most 256 colours fit a palette; more stay RGBA.
            let want_stored = if colours <= 256 {
                png::ColorType::Indexed
            } else {
                png::ColorType::Rgba
            };
            assert_eq!(
                (stored, shown),
                (want_stored, png::ColorType::Rgba),
                "{colours} colours"
            );
            for (p, q) in rgb.chunks_exact(3).zip(px.chunks_exact(4)) {
                let want = if p == [key.0, key.1, key.2] {
                    [0, 0, 0, 0]
                } else {
                    [p[0], p[1], p[2], 210]
                };
                assert_eq!(q, want, "{colours} colours");
            }
            // Opaque pictures (maps) keep their pixels and no alpha.
            let (_, shown, px) = decode(&encode_png(&rgb, (64, 64), None).expect("png"));
            assert_eq!((shown, px), (png::ColorType::Rgb, rgb.clone()), "{colours} colours");
        }
    }
}
