"""The Python side of scripts/pycompare (what it measures and leaves out is in
that script's header): hexflow's ingest, weights and release redone with
shapely + h3 + polars + opendp, and timed beside hexflow's CLI on one input."""
import argparse, csv, hashlib, json, math, os, shutil, sqlite3, subprocess, sys, time, tomllib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

_t = time.perf_counter()
import h3, numpy as np, polars as pl, shapely, opendp.prelude as dp
IMPORT_S = time.perf_counter() - _t
dp.enable_features("contrib")

NAME, FROM, TO = "pycompare", date(2025, 3, 3), date(2025, 3, 9)  # Monday..Sunday, no DST change
E2 = 0.006694379990141317  # WGS84, as src/grid/projection.rs
Z95 = 1.959963984540054


# ---- the grid, as src/grid/{mod,catalogue,coverage,projection}.rs read it ----
def load_city(policy_path):
    pol = tomllib.loads(policy_path.read_text())
    gdir = (policy_path.parent / pol["grid"]).resolve()
    return pol, gdir, tomllib.loads((gdir / "grid.toml").read_text())

def read_cells(gdir):
    df = pl.read_csv(gdir / "cells.csv", infer_schema_length=0)
    need = ["cell_id", "site_id", "lat", "lon", "azimuth_deg", "beamwidth_deg", "range_m"]
    if sorted(df.columns) != sorted(need) or df["cell_id"].is_duplicated().any():
        raise SystemExit("cells.csv: wrong columns or duplicate cell_id")
    f = lambda c: df[c].str.strip_chars().cast(pl.Float64, strict=False).to_numpy()
    lat, lon, az, bw, rng = f("lat"), f("lon"), f("azimuth_deg"), f("beamwidth_deg"), f("range_m")
    if np.isnan(lat).any() or np.isnan(lon).any() or (np.abs(lat) > 85).any() or (np.abs(lon) > 180).any():
        raise SystemExit("cells.csv: bad coordinates")
    bw = np.where(np.isnan(az), 360.0, np.where(np.isnan(bw), 120.0, bw))  # DEFAULT_BEAMWIDTH_DEG
    # derive_ranges: 0.75 × the mean haversine distance to the 3 nearest other sites, in [150, 15000] m.
    sites = df["site_id"].to_list(); first = {s: i for i, s in reversed(list(enumerate(sites)))}
    la, lo = np.radians(lat[list(first.values())]), np.radians(lon[list(first.values())])
    hav = np.sin((la[None] - la[:, None]) / 2) ** 2 + np.cos(la[:, None]) * np.cos(la[None]) * np.sin((lo[None] - lo[:, None]) / 2) ** 2
    d = 2 * 6371008.8 * np.arcsin(np.sqrt(hav)); np.fill_diagonal(d, np.nan)
    derived = dict(zip(first, np.clip(np.nan_to_num(0.75 * np.nanmean(np.sort(d, axis=1)[:, :3], axis=1), nan=15e3), 150, 15e3)))
    rng = np.where(np.isnan(rng), [derived[s] for s in sites], rng)
    return dict(ids=df["cell_id"].str.strip_chars().to_list(), lat=lat, lon=lon, az=az, bw=bw, range=rng)

def read_area(path):
    gj = json.loads(path.read_text())
    geoms = [f["geometry"] for f in gj["features"]] if gj["type"] == "FeatureCollection" else [gj.get("geometry", gj)]
    return shapely.union_all([shapely.geometry.shape(g) for g in geoms]), geoms

def authalic(lat, e=math.sqrt(E2)):
    q = lambda s: (1 - E2) * (s / (1 - E2 * s * s) - np.log((1 - e * s) / (1 + e * s)) / (2 * e))
    return np.arcsin(np.clip(q(np.sin(lat)) / q(1.0), -1, 1))

def laea(lat0, lon0):
    """Lambert azimuthal equal-area on the authalic sphere (projection.rs): (n, 2) lon/lat degrees -> metres."""
    b, l0 = authalic(np.radians(lat0)), math.radians(lon0)
    def xy(c):
        lat, dl = authalic(np.radians(c[:, 1])), np.radians(c[:, 0]) - l0
        r = 6371007.181 * np.sqrt(2 / (1 + np.sin(b) * np.sin(lat) + np.cos(b) * np.cos(lat) * np.cos(dl)))
        return np.column_stack([r * np.cos(lat) * np.sin(dl), r * (np.cos(b) * np.sin(lat) - np.sin(b) * np.cos(lat) * np.cos(dl))])
    return xy

def destination(lat, lon, brg, dist):
    """Vincenty's direct geodesic on WGS84 (hexflow uses Karney's; they agree to < 0.1 mm here)."""
    a, f = 6378137.0, 1 / 298.257223563
    b, al, tu = a * (1 - f), np.radians(brg), (1 - f) * np.tan(np.radians(lat))
    cu = 1 / np.sqrt(1 + tu * tu); su, s1 = tu * cu, np.arctan2(tu, np.cos(np.radians(brg)))
    sa = cu * np.sin(al); c2a = 1 - sa * sa; u2 = c2a * (a * a - b * b) / (b * b)
    A = 1 + u2 / 16384 * (4096 + u2 * (-768 + u2 * (320 - 175 * u2)))
    B = u2 / 1024 * (256 + u2 * (-128 + u2 * (74 - 47 * u2)))
    sig = dist / (b * A)
    for _ in range(9):
        c2m, ss, cs = np.cos(2 * s1 + sig), np.sin(sig), np.cos(sig)
        sig = dist / (b * A) + B * ss * (c2m + B / 4 * (cs * (-1 + 2 * c2m ** 2) - B / 6 * c2m * (-3 + 4 * ss ** 2) * (-3 + 4 * c2m ** 2)))
    x = su * ss - cu * cs * np.cos(al)
    lat2, lam = np.arctan2(su * cs + cu * ss * np.cos(al), (1 - f) * np.sqrt(sa * sa + x * x)), np.arctan2(ss * np.sin(al), cu * cs - su * ss * np.cos(al))
    C = f / 16 * c2a * (4 + f * (4 - 3 * c2a))
    L = lam - (1 - C) * f * sa * (sig + C * ss * (c2m + C * cs * (-1 + 2 * c2m ** 2)))
    return np.degrees(lat2), lon + np.degrees(L)

def fsync(path):
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())

def hex_cells(shape, res):  # h3o's ContainmentMode::Covers = h3's "overlap"
    return h3.h3shape_to_cells_experimental(shape, res, contain="overlap")


# ---- step 1: ingest (src/ingest, src/store) ----
def ingest(policy_path, data, delivery):
    pol, gdir, spec = load_city(policy_path)
    ids = read_cells(gdir)["ids"]; read_area(gdir / spec["study_area"])  # the grid, loaded as hexflow loads it
    store = data / "store" / pol["dataset"]; cat_path = store / "catalog.json"
    cat = json.loads(cat_path.read_text()) if cat_path.exists() else {"generation": 0, "deliveries": [], "partitions": {}}
    sha = hashlib.sha256(delivery.read_bytes()).hexdigest()
    if any(d["sha256"] == sha for d in cat["deliveries"]):
        return 0  # the same bytes twice: a no-op
    df = pl.read_csv(delivery, infer_schema_length=0)
    if sorted(df.columns) != ["bin_start", "cell_id", "devices"]:
        raise SystemExit(f"{delivery}: expected exactly cell_id, bin_start, devices")
    lim, tz, blen = pol["ingest"], spec["timezone"], spec["bin_len_s"]
    t = pl.col("bin_start").str.strip_chars().str.to_datetime("%+", time_unit="us", time_zone="UTC", strict=False)
    loc = pl.col("t").dt.convert_time_zone(tz)
    d = df.with_row_index("line", 2).with_columns(
        cell=pl.col("cell_id").str.strip_chars(), t=t, v=pl.col("devices").str.strip_chars().cast(pl.Int64, strict=False))
    d = d.with_columns(
        bad_cell=pl.col("cell").is_null() | ~pl.col("cell").is_in(ids),
        bad_t=pl.col("t").is_null() | (pl.col("t").dt.microsecond() != 0) | (pl.col("t") > datetime.now(timezone.utc))
        | (loc.dt.date() < date.fromisoformat(str(lim["earliest_day"])))
        | (sum(getattr(loc.dt, f)().cast(pl.Int64) * k for f, k in (("hour", 3600), ("minute", 60), ("second", 1))) % blen != 0),
        bad_v=pl.col("v").is_null() | (pl.col("v") < 0) | (pl.col("v") > lim["max_devices_per_cell_bin"]))
    ok = ~pl.any_horizontal("bad_cell", "bad_t", "bad_v")  # duplicates among valid rows only
    d = d.with_columns(bad_dup=ok & ~pl.struct("cell", "t", ok.alias("ok")).is_first_distinct())
    bad = d.filter(pl.any_horizontal("bad_cell", "bad_t", "bad_v", "bad_dup"))
    if bad.height:
        q = data / "quarantine" / pol["dataset"] / f"{sha[:12]}-{delivery.name}.rejected.csv"
        q.parent.mkdir(parents=True, exist_ok=True)
        bad.select("line", "cell_id", "bin_start", "devices", "bad_cell", "bad_t", "bad_v", "bad_dup").write_csv(q)
        raise SystemExit(f"{delivery}: {bad.height} of {d.height} rows rejected, nothing stored; see {q}")
    pos = pl.DataFrame({"cell": ids, "ci": np.arange(len(ids), dtype=np.uint32)})
    d = (d.join(pos, on="cell").with_columns(day=loc.dt.date()).sort("t", "ci")
         .select(pl.col("cell").alias("cell_id"), pl.col("t").alias("bin_start"), pl.col("v").cast(pl.UInt32).alias("devices"), "day"))
    gen, parts = cat["generation"] + 1, cat["partitions"].setdefault("footfall", {})
    # As hexflow's store (v2): one LZ4 file per commit and calendar month, a row group per day (as long as
    # the days are equally long: polars has no batched writer), each day a run of rows named in the catalog.
    for (month,), frame in d.with_columns(month=pl.col("day").dt.strftime("%Y-%m")).partition_by("month", as_dict=True).items():
        path = store / "footfall" / f"g{gen:06}-{month}.parquet"; path.parent.mkdir(parents=True, exist_ok=True)
        sizes = frame.group_by("day", maintain_order=True).len()
        frame.drop("day", "month").write_parquet(path, compression="lz4", row_group_size=int(sizes["len"].max())); fsync(path)
        for day, n, off in zip(sizes["day"], sizes["len"], np.cumsum(sizes["len"]) - sizes["len"]):
            parts[str(day)] = {"file": path.name, "offset": int(off), "rows": int(n)}
    cat["generation"] = gen
    cat["deliveries"].append({"sha256": sha, "file": delivery.name, "rows": d.height, "days": d["day"].n_unique()})
    tmp = cat_path.with_suffix(".tmp"); tmp.write_text(json.dumps(cat)); fsync(tmp); os.replace(tmp, cat_path)
    return d.height


# ---- step 2: the weight matrix W (src/grid/weights.rs) ----
def weights(policy_path, data, res):
    pol, gdir, spec = load_city(policy_path)
    c, (area, area_geoms) = read_cells(gdir), read_area(gdir / spec["study_area"])
    x0, y0, x1, y1 = area.bounds; xy = laea((y0 + y1) / 2, (x0 + x1) / 2)
    area_m = shapely.transform(area, xy); shapely.prepare(area_m)
    # Coverage: a sector (site, arc from az − bw/2 every ≤ 2°) or a disc.
    full = c["bw"] >= 360
    sweep = np.where(full, 360.0, c["bw"]); start = np.where(full, 0.0, c["az"] - c["bw"] / 2)
    steps = np.maximum(np.ceil(sweep / 2.0), 3).astype(int); npts = np.where(full, steps, steps + 1)
    ci = np.repeat(np.arange(len(full)), npts); k = np.arange(len(ci)) - np.repeat(np.cumsum(npts) - npts, npts)
    la, lo = destination(c["lat"][ci], c["lon"][ci], start[ci] + sweep[ci] * k / steps[ci], c["range"][ci])
    cov_deg, cov_m = [], []
    for i, (a, b) in enumerate(zip(np.cumsum(npts) - npts, np.cumsum(npts))):
        ring = np.column_stack([lo[a:b], la[a:b]])
        cov_deg.append(ring if full[i] else np.vstack([[c["lon"][i], c["lat"][i]], ring]))
        cov_m.append(shapely.Polygon(xy(cov_deg[-1])))
    clipped = shapely.intersection(np.array(cov_m), area_m)
    inside = shapely.area(clipped) >= 1.0; shapely.prepare(clipped)  # MIN_COVERAGE_M2
    polys = {}
    def hex_polys(hexes):  # projected hex outlines, each built once
        if new := [h for h in dict.fromkeys(hexes) if h not in polys]:
            b = [np.array(h3.cell_to_boundary(h))[:, ::-1] for h in new]
            polys.update(zip(new, shapely.polygons(shapely.linearrings(xy(np.vstack(b)), indices=np.repeat(np.arange(len(b)), [len(x) for x in b])))))
        return np.array([polys[h] for h in hexes], dtype=object)
    todo = {i: hex_cells(h3.LatLngPoly([(y, x) for x, y in cov_deg[i]]), res) for i in np.flatnonzero(inside)}
    done, pieces = defaultdict(set), defaultdict(list)
    for rnd in range(8):  # hexflow's rounds: the ring around new pieces, until none is found
        cc, hh = [], []
        for i, hs in todo.items():
            for h in hs:
                if h not in done[i]:
                    done[i].add(h); cc.append(i); hh.append(h)
        if not cc:
            break
        hp, cl = hex_polys(hh), clipped[cc]
        hit = shapely.intersects(hp, cl)
        area_ = np.zeros(len(hh)); area_[hit] = shapely.area(shapely.intersection(hp[hit], cl[hit]))
        found, nxt = defaultdict(list), {}
        for i, h, a in zip(cc, hh, area_):
            if a > 0:
                found[i].append((h, a))
        for i in todo:
            pieces[i] += found[i]
            ring = {n for h, _ in found[i] for n in h3.grid_disk(h, 1)} - done[i]
            if ring:  # empty when the round found nothing new: that cell is done
                nxt[i] = ring
        todo = nxt
    rows = []
    for i in sorted(pieces):
        tot = sum(a for _, a in pieces[i])
        rows += [(c["ids"][i], h, a / tot) for h, a in sorted(pieces[i], key=lambda p: int(p[0], 16))]
    keys = sorted(set().union(*(hex_cells(h3.geo_to_h3shape(g), res) for g in area_geoms), (h for _, h, _ in rows)), key=lambda h: int(h, 16))
    out = data / "grids" / spec["name"]; out.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows, schema=["cell_id", "hex_id", "weight"], orient="row").write_parquet(out / f"weights-r{res}.parquet", compression="zstd")
    pl.DataFrame({"hex_id": keys}).write_parquet(out / f"hexes-r{res}.parquet", compression="zstd")
    return len(rows)


# ---- step 3: the release (src/release/mod.rs, src/privacy) ----
def calibrate(rho, l2, n):
    """mechanism::calibrate: the smallest scale whose OpenDP zCDP map is ≤ ρ."""
    textbook = l2 / math.sqrt(2 * rho)
    # Integer counts; or Draw::float: n real sums in one sized measurement on OpenDP's grid 2^k, k = ⌊log2 σ⌋ − 30.
    k = None if n is None else max(math.floor(math.log2(textbook)) - 30, -1074)
    dom = dp.vector_domain(dp.atom_domain(T="i64")) if n is None else dp.vector_domain(dp.atom_domain(T=float, nan=False), size=n)
    mk = lambda s: dp.m.make_gaussian(dom, dp.l2_distance(T=float), s, k=k)
    scale = dp.binary_search(lambda s: mk(s).map(l2) <= rho, bounds=(textbook * 0.5, textbook * 2.0 + 1e-9))
    return dict(scale=scale, rho=mk(scale).map(l2), l2=l2, m=mk(scale))

def cell_bars(scale, cols):
    """errorbar::cell_placement: the 95 % point of Σ w_c N_c (N_c OpenDP's discrete Gaussian),
    exact for one cell, normal from σ ≥ 20, else the lattice pmfs on a grid of sd/128 convolved by FFT."""
    M = math.ceil(8.5 * scale) + 2
    n = np.arange(M + 1, dtype=float)
    p = np.exp(-n * n / (2.0 * scale * scale)); p /= p[0] + 2.0 * p[1:].sum()
    cum0, var = np.concatenate([[0.0], np.cumsum(p)]), 2.0 * (n * n * p).sum()
    mass = lambda lo, hi: np.where(lo > np.minimum(hi, M), 0.0, cum0[np.minimum(hi, M) + 1] - cum0[np.minimum(lo, M + 1)])
    one = int(np.argmax(2 * cum0[1:] - p[0] >= 0.95))
    out = np.zeros((len(cols), 2))
    for h, w in enumerate(cols):
        if len(w) == 0:
            continue
        sd = out[h, 1] = math.sqrt(var * (w * w).sum())
        if len(w) == 1 or scale >= 20.0:
            out[h, 0] = w[0] * one if len(w) == 1 else Z95 * sd; continue
        step = sd / 128
        half = math.ceil(min(w.sum() * M, 12 * sd) / step) + 1
        size = 1 << (2 * half).bit_length()
        fn = np.ceil(np.maximum((np.arange(1, half + 2) - 0.5) * step / w[:, None], 0.0)).astype(np.int64)  # first_n(j)
        g = np.zeros((len(w), size))
        g[:, 0] = 2 * mass(0, np.maximum(fn[:, 0] - 1, 0)) - p[0]
        q = np.where(fn[:, 1:] > fn[:, :-1], mass(np.maximum(fn[:, :-1], 1), fn[:, 1:] - 1), 0.0)
        g[:, 1:half + 1] = q; g[:, size - half:] = q[:, ::-1]
        tot = np.maximum(np.fft.irfft(np.fft.rfft(g, axis=1).prod(axis=0), n=size), 0)
        acc = tot[0] + np.concatenate([[0.0], np.cumsum(tot[1:size // 2] + tot[size - 1:size // 2:-1])])
        out[h, 0] = (np.argmax(acc >= 0.95) if acc[-1] >= 0.95 else size // 2 - 1) * step
    return out

def release(policy_path, data, res, rho, audience):
    pol, gdir, spec = load_city(policy_path)
    grid, _, priv, aud = read_cells(gdir), read_area(gdir / spec["study_area"]), pol["privacy"], pol["audiences"][audience]
    if res > aud["finest_res"] or aud["shortest_bin"] != "1h" or not 1e-9 <= rho <= 100 \
            or TO + timedelta(days=aud["min_delay_days"]) > datetime.now(ZoneInfo(spec["timezone"])).date():
        raise SystemExit("purpose limit: the release is refused")
    ds, days = pol["dataset"], [FROM + timedelta(days=i) for i in range((TO - FROM).days + 1)]
    bounds = {k: priv[k] for k in ("max_cells_per_bin", "max_bins_per_day", "max_trips_per_day")}
    spec_json = json.dumps(dict(dataset=ds, audience=audience, metric="footfall", res=res, bin="1h", from_=str(FROM), to=str(TO), rho=rho))
    rid = "r-" + hashlib.sha256((spec_json + json.dumps(bounds) + (gdir / "cells.csv").read_text()).encode()).hexdigest()[:20]
    wdf = pl.read_parquet(data / "grids" / spec["name"] / f"weights-r{res}.parquet")
    keys = pl.read_parquet(data / "grids" / spec["name"] / f"hexes-r{res}.parquet")["hex_id"].to_list()
    ids = grid["ids"]; cpos = {c: i for i, c in enumerate(ids)}; hpos = {h: i for i, h in enumerate(keys)}
    ci, hi = np.array([cpos[c] for c in wdf["cell_id"]]), np.array([hpos[h] for h in wdf["hex_id"]])
    w = wdf["weight"].to_numpy(); W = np.zeros((len(ids), len(keys))); W[ci, hi] = w
    w2max, sum_w2, covered = np.sqrt(np.bincount(ci, w * w)).max(), (w * w).sum(), np.unique(hi)
    tz, step = ZoneInfo(spec["timezone"]), max(spec["bin_len_s"], 3600)
    midnight = lambda d: int(datetime(d.year, d.month, d.day, tzinfo=tz).timestamp())
    bins = np.arange(midnight(FROM), midnight(TO + timedelta(days=1)), step)
    cat = json.loads((data / "store" / ds / "catalog.json").read_text())["partitions"]["footfall"]
    if any(str(d) not in cat for d in days):
        raise SystemExit("no data stored for some day of the window")
    # Both placements calibrated by OpenDP; the one with less expected error wins (choose_placement).
    C, B = bounds["max_cells_per_bin"], bounds["max_bins_per_day"]
    a = min(B, max((3600 // spec["bin_len_s"]) or 1, 1))
    cell = calibrate(rho, math.sqrt(C * B * a), None)
    hexn = calibrate(rho, C * w2max * math.sqrt(a * B), len(bins) * len(covered))
    placement = "cell" if len(bins) * cell["scale"] ** 2 * sum_w2 <= len(bins) * hexn["scale"] ** 2 * len(covered) else "hex"
    c = cell if placement == "cell" else hexn
    # The charge, committed before any count is read (a bare ledger: one transaction, caps checked).
    db = sqlite3.connect(data / "ledger.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS charges (release_id, dataset, audience, day, rho, state)")
    db.execute("BEGIN IMMEDIATE")
    for d in days:
        spent_a, spent = db.execute("SELECT COALESCE(SUM(CASE WHEN audience=? THEN rho END),0), COALESCE(SUM(rho),0) FROM charges WHERE dataset=? AND day=?", (audience, ds, str(d))).fetchone()
        if spent_a + c["rho"] > aud["rho_per_day"] or spent + c["rho"] > priv["rho_per_day_cap"]:
            db.execute("ROLLBACK"); raise SystemExit(f"budget cap reached on {d}")
    db.executemany("INSERT INTO charges VALUES (?,?,?,?,?, 'charged')", [(rid, ds, audience, str(d), c["rho"]) for d in days])
    db.execute("COMMIT")
    cols = [np.array(x) for x in np.split(w[np.argsort(hi, kind="stable")], np.cumsum(np.bincount(hi, minlength=len(keys)))[:-1])]
    bars = cell_bars(c["scale"], cols) if placement == "cell" else np.array([(Z95 * c["scale"], c["scale"]) if len(x) else (0.0, 0.0) for x in cols])
    # Counts per (bin, cell), then OpenDP's noise.
    runs = defaultdict(list)  # the window's days, a run of rows per file
    for d in days:
        runs[cat[str(d)]["file"]].append(cat[str(d)])
    df = pl.concat([pl.scan_parquet(data / "store" / ds / "footfall" / f).slice(r[0]["offset"], sum(x["rows"] for x in r)) for f, r in runs.items()]).join(pl.LazyFrame({"cell_id": ids, "ci": np.arange(len(ids))}), on="cell_id") \
        .select("ci", pl.col("bin_start").dt.epoch("s"), "devices").collect()
    t = df["bin_start"].to_numpy(); b = np.searchsorted(bins, t, side="right") - 1
    ok = (b >= 0) & (t < midnight(TO + timedelta(days=1)))
    counts = np.bincount(b[ok] * len(ids) + df["ci"].to_numpy()[ok], df["devices"].to_numpy()[ok].astype(float),
                         minlength=len(bins) * len(ids)).astype(np.int64).reshape(len(bins), len(ids))
    values = np.zeros((len(bins), len(keys)))
    if placement == "cell":  # integer noise on the cells that reach a hex, in chunks on every core (as hexflow)
        wc = np.unique(ci); x = counts[:, wc].ravel().tolist()
        with ThreadPoolExecutor(os.cpu_count()) as ex:
            noisy = [v for part in ex.map(c["m"], [x[i:i + 4096] for i in range(0, len(x), 4096)]) for v in part]
        values = np.array(noisy, dtype=float).reshape(len(bins), len(wc)) @ W[wc]
    else:  # real hex sums, all n in the one sized measurement priced
        sums = (counts @ W)[:, covered]
        values[:, covered] = np.array(c["m"](sums.ravel().tolist())).reshape(sums.shape)
    est = values.ravel(); bar = np.tile(bars[:, 0], len(bins)); sd = np.tile(bars[:, 1], len(bins))
    up = lambda v: np.ceil(v * 100) / 100
    out = pl.DataFrame({
        "hex_id": np.tile(np.array(keys), len(bins)),
        "bin_start": pl.Series(np.repeat(bins * 1_000_000, len(keys))).cast(pl.Datetime("us", "UTC")),
        "value": np.maximum(np.floor(est + 0.5), 0).astype(np.int64), "ci95": np.where(sd > 0, up(bar + 0.5), 0.0),
        "low": (sd > 0) & (est < priv["display_threshold"]), "covered": sd > 0,
        "estimate": est, "estimate_ci95": up(bar), "noise_sd": sd})
    rdir = data / "releases" / ds / rid; tmp = rdir.with_name(f".{rid}.tmp"); tmp.mkdir(parents=True)
    out.write_parquet(tmp / "values.parquet", compression="zstd")
    eps = dp.c.make_zCDP_to_approxDP(c["m"]).map(c["l2"]).epsilon(priv["delta"])
    manifest = dict(release_id=rid, spec=json.loads(spec_json), placement=placement, noise_scale=c["scale"], rho=c["rho"],
                    epsilon=eps, delta=priv["delta"], sensitivity_l2=c["l2"], keys=len(keys), bins=len(bins), values=out.height,
                    values_sha256=hashlib.sha256((tmp / "values.parquet").read_bytes()).hexdigest())
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    fsync(tmp / "values.parquet"); fsync(tmp / "manifest.json"); os.rename(tmp, rdir)
    db.execute("UPDATE charges SET state='published' WHERE release_id=?", (rid,)); db.close()
    return dict(manifest, dir=str(rdir))


# ---- the comparison ----
def run_hexflow(exe, data, pols, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("HEXFLOW_LEDGER", "HEXFLOW_LOG")}
    t = time.perf_counter()
    p = subprocess.run([exe, "--data-dir", data, "--policies-dir", pols, *map(str, args), "--json"], capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"hexflow {args[0]} failed ({p.returncode}):\n{p.stderr}")
    return dt, json.loads(p.stdout)

def setup(a, work):
    """Untimed: the network (whole sites, up to --cells), `hexflow init`, a week of counts."""
    shutil.rmtree(work, ignore_errors=True); (work / "in").mkdir(parents=True)
    rows, by_site, keep = list(csv.reader(open(a.repo / "grids/marseille/cells.csv"))), defaultdict(list), []
    for r in rows[1:]:
        by_site[r[1]].append(r)
    for site in by_site.values():
        if len(keep) + len(site) > a.cells:
            break
        keep += site
    csv.writer(open(work / "in/cells.csv", "w", newline="")).writerows([rows[0]] + keep)
    p = subprocess.run([a.hexflow, "init", "--name", NAME, "--cells", work / "in/cells.csv", "--area", a.repo / "grids/marseille/area.geojson",
                        "--timezone", "Europe/Paris", "--out", work / "city", "--json"], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"hexflow init failed:\n{p.stderr}")
    policy = work / "city/privacy-budgets" / f"{NAME}.toml"
    pol, _, spec = load_city(policy)
    audience = next((n for n, x in pol["audiences"].items() if x["finest_res"] >= a.res and x["shortest_bin"] == "1h"), None)
    if a.res not in spec["resolutions"] or audience is None:
        raise SystemExit(f"hexflow init offers resolutions {spec['resolutions']} and {pol['audiences']}: no hourly release at res {a.res}")
    # A week of hourly counts: a lognormal level per cell, a daily rhythm, quieter weekends, Poisson draws.
    rng, tz = np.random.default_rng(a.seed), ZoneInfo(spec["timezone"])
    midnight = lambda d: int(datetime.combine(d, datetime.min.time(), tz).timestamp())
    stamps = [datetime.fromtimestamp(t, tz) for t in range(midnight(FROM), midnight(TO + timedelta(days=1)), 3600)]
    rhythm = np.array([(0.15 + 0.85 * math.exp(-((s.hour - 13) / 5) ** 2)) * (0.8 if s.weekday() >= 5 else 1.0) for s in stamps])
    counts = rng.poisson(np.outer(rhythm, rng.lognormal(math.log(120), 0.8, len(keep))))
    with open(work / "in/footfall-week.csv", "w") as fh:
        fh.write("cell_id,bin_start,devices\n")
        for s, row in zip(stamps, counts):
            fh.writelines(f"{r[0]},{s.isoformat(timespec='seconds')},{n}\n" for r, n in zip(keep, row))
    return policy, audience, len(keep), len(by_site), counts.size

def main():
    ap = argparse.ArgumentParser()
    for arg, kind, default in (("hexflow", Path, None), ("repo", Path, None), ("cells", int, 696), ("res", int, 9), ("rho", float, 0.1),
                               ("seed", int, 20250303), ("runs", int, 2), ("work", Path, Path(os.environ.get("TMPDIR", "/tmp")) / "hexflow-pycompare")):
        ap.add_argument(f"--{arg}", type=kind, default=default, required=default is None)
    a = ap.parse_args()
    policy, audience, n_cells, n_sites, n_rows = setup(a, a.work)
    delivery, pols, runs = a.work / "in/footfall-week.csv", policy.parent, {"hexflow": [], "python": []}
    for r in range(a.runs):  # alternating, each on fresh data dirs
        hx, py, times = a.work / f"hexflow-{r}", a.work / f"python-{r}", []
        for args in (("ingest", "--dataset", NAME, delivery), ("grid", "build", "--grid", policy.parents[1] / "grids" / NAME, "--res", a.res),
                     ("release", "--dataset", NAME, "--audience", audience, "--metric", "footfall", "--res", a.res, "--bin", "1h",
                      "--from", FROM, "--to", TO, "--rho", a.rho)):
            dt, out = run_hexflow(a.hexflow, hx, pols, *args); times.append(dt)
        runs["hexflow"].append((times, hx, out))
        times = []
        for f, args in ((ingest, (delivery,)), (weights, (a.res,)), (release, (a.res, a.rho, audience))):
            t = time.perf_counter(); out = f(policy, py, *args); times.append(time.perf_counter() - t)
        runs["python"].append((times, py, out))
    (ht, hx, hout), (pt, py, pout) = (min(v, key=lambda x: sum(x[0])) for v in runs.values())
    hm = hout["manifest"]
    print(f"\n{n_cells} cells on {n_sites} sites (the first whole sites of grids/marseille/cells.csv), Marseille area, "
          f"{n_rows:,} hourly rows {FROM}..{TO}, res {a.res}, ρ {a.rho} per day, audience {audience}")
    print(f"better of {a.runs} runs per side (smallest total); hexflow: whole CLI processes; Python: in-process, "
          f"imports ({IMPORT_S:.2f} s) not counted\n")
    print(f"{'step':<28}{'hexflow s':>11}{'Python s':>11}{'ratio':>9}")
    for s, h, p in zip(["ingest", f"weights (res {a.res})", f"release (res {a.res}, 1h, week)", "total"], ht + [sum(ht)], pt + [sum(pt)]):
        print(f"{s:<28}{h:>11.3f}{p:>11.3f}{p / h:>8.1f}×")
    # What must agree.
    read = lambda d, pat: pl.read_parquet(next(d.glob(pat)))
    hw, pw = read(hx / "grids" / NAME, f"*/weights-r{a.res}.parquet"), read(py / "grids" / NAME, f"weights-r{a.res}.parquet")
    hk, pk = (read(d / "grids" / NAME, f"**/hexes-r{a.res}.parquet")["hex_id"].to_list() for d in (hx, py))
    full = lambda x, y, on: x.join(y, on=on, how="full", coalesce=True, suffix="_py").fill_null(0.0)
    dw = (lambda j: (j["weight"] - j["weight_py"]).abs().max())(full(hw, pw, ["cell_id", "hex_id"]))
    sums = lambda w: w.group_by("cell_id").agg(pl.col("weight").sum())
    ds = (lambda j: (j["weight"] - j["weight_py"]).abs().max())(full(sums(hw), sums(pw), "cell_id"))
    hv, pv = (pl.read_parquet(Path(o["dir"]) / "values.parquet") for o in (hout, pout))
    jv = hv.join(pv, on=["hex_id", "bin_start"], suffix="_py")
    same = lambda k: abs(hm[k] - pout[k]) <= 1e-9 * abs(hm[k])
    n_cells_w = [x["cell_id"].n_unique() for x in (hw, pw)]
    checks = [("W: nonzero weights", f"{hw.height} vs {pw.height}", hw.height == pw.height),
              ("W: cells with weights", f"{n_cells_w[0]} vs {n_cells_w[1]}", n_cells_w[0] == n_cells_w[1]),
              ("W: max |Δ row sum|", f"{ds:.2e}", ds <= 1e-6), ("W: max |Δ weight|", f"{dw:.2e}", dw <= 1e-6),
              ("hex key set", f"{len(hk)} vs {len(pk)} hexes, {len(set(hk) ^ set(pk))} differ", hk == pk),
              ("released values (hexes × bins)", f"{hm['values']:,} = {hm['keys']} × {hm['bins']} vs {pout['values']:,}; {jv.height:,} keys in both",
               hm["values"] == pout["values"] == hv.height == pv.height == jv.height),
              ("noise placement", f"{hm['placement']} vs {pout['placement']}", hm["placement"] == pout["placement"]),
              ("noise scale σ", f"{hm['noise_scale']:.12g} vs {pout['noise_scale']:.12g}", same("noise_scale")),
              ("ρ charged per day", f"{hm['rho']:.12g} vs {pout['rho']:.12g}", same("rho"))]
    print("\nagreement (hexflow vs Python):")
    for name, what, ok in checks:
        print(f"  {'ok  ' if ok else 'FAIL'} {name:<32} {what}")
    corr = np.corrcoef(jv["estimate"].to_numpy(), jv["estimate_py"].to_numpy())[0, 1]
    print(f"  info error bars estimate_ci95: max |Δ| {(jv['estimate_ci95'] - jv['estimate_ci95_py']).abs().max():.3g}; "
          f"ε at δ {hm['delta']:g}: {hm['epsilon']:.6g} vs {pout['epsilon']:.6g}; estimates (independent noise) correlate at {corr:.4f}")
    print("Python leaves out: hexflow's quarantine cap, store locks and recovery, ledger migrations and release locks, "
          "the hash-keyed weight cache (scripts/pycompare's header)")
    sys.exit(0 if all(ok for _, _, ok in checks) else 1)


if __name__ == "__main__":
    main()
