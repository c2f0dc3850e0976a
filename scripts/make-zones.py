#!/usr/bin/env python3
"""Generate grids/marseille/zones.geojson: Marseille's 16 arrondissements.

The zones are approximations, not the official boundaries. Each one is the
union of the Voronoi cells of its quartier seeds in
grids/marseille/zones-seeds.csv, clipped to the study area
(grids/marseille/area.geojson). The seeds are well-known quartiers placed
from public knowledge, plus a few extra points so that the large hilly
arrondissements (8e, 9e, 11e, 13e, 16e) take their known shapes. Internal
boundaries are therefore straight Voronoi edges and can be a few hundred
metres off the real ones; areas come within about ±35 % of the official
figures (see --check output).

Requires Python 3 and shapely >= 2.1 (`pip install shapely`). pyproj is
used for geodesic areas in the check when installed (`pip install pyproj`),
otherwise a local equirectangular approximation is used; matplotlib is
only needed for --png (`pip install matplotlib`).

Usage (from the repository root):
    python3 scripts/make-zones.py            # write zones.geojson and check it
    python3 scripts/make-zones.py --png /tmp/zones.png

The output is deterministic for given seeds and study area.
"""

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import shapely
from shapely.geometry import MultiPoint, MultiPolygon, Polygon, mapping, shape
from shapely.ops import voronoi_diagram
from shapely.geometry.polygon import orient

ROOT = Path(__file__).resolve().parent.parent
GRID = ROOT / "grids" / "marseille"

# Local metric-ish projection: x = lon * cos(43.3°), y = lat (both in degrees
# of latitude, ~111.2 km each). Linear, so clipping in it is exact in lon/lat.
COS_LAT = math.cos(math.radians(43.3))
KM_PER_DEG = 111.195  # mean Earth radius 6371.0 km

# Official areas (km², approximate; islands included in the 7e and 8e).
OFFICIAL_KM2 = {
    1: 1.8, 2: 3.6, 3: 2.6, 4: 2.9, 5: 2.3, 6: 2.1, 7: 5.5, 8: 19.6,
    9: 70.2, 10: 11.8, 11: 26.5, 12: 14.3, 13: 30.3, 14: 16.1, 15: 16.6, 16: 16.9,
}


def fwd(geom):
    return shapely.transform(geom, lambda c: c * [COS_LAT, 1.0])


def inv(geom):
    return shapely.transform(geom, lambda c: c / [COS_LAT, 1.0])


def short_name(n):
    return "1er" if n == 1 else f"{n}e"


def load_area(path):
    gj = json.loads(path.read_text(encoding="utf-8"))
    if gj.get("type") == "FeatureCollection":
        geoms = [shape(f["geometry"]) for f in gj["features"]]
    elif gj.get("type") == "Feature":
        geoms = [shape(gj["geometry"])]
    else:
        geoms = [shape(gj)]
    area = shapely.union_all(geoms)
    if not area.is_valid or area.is_empty:
        sys.exit(f"{path}: study area is empty or invalid")
    return area


def load_seeds(path):
    seeds = []
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            seeds.append((int(row["arrondissement"]), row["quartier"],
                          float(row["lat"]), float(row["lon"])))
    arrs = sorted({s[0] for s in seeds})
    if arrs != list(range(1, 17)):
        sys.exit(f"{path}: expected arrondissements 1..16, got {arrs}")
    pts = {(s[2], s[3]) for s in seeds}
    if len(pts) != len(seeds):
        sys.exit(f"{path}: duplicate seed coordinates")
    return seeds


def round_geom(geom, nd=5):
    """Round to nd decimals, drop repeated points, CCW exteriors (RFC 7946)."""
    geom = shapely.set_precision(geom, 10 ** -nd)  # snaps and keeps it valid
    polys = [geom] if isinstance(geom, Polygon) else list(getattr(geom, "geoms", []))
    polys = [orient(p, sign=1.0) for p in polys if isinstance(p, Polygon) and not p.is_empty]
    if not polys:
        return None
    out = polys[0] if len(polys) == 1 else MultiPolygon(polys)
    return out


def round_coords(obj, nd=5):
    if isinstance(obj, (list, tuple)):
        if obj and isinstance(obj[0], (int, float)):
            return [round(float(v), nd) for v in obj]
        return [round_coords(o, nd) for o in obj]
    return obj


def build(area, seeds):
    area_m = fwd(area)
    pts = fwd(MultiPoint([(lon, lat) for _, _, lat, lon in seeds]))
    env = area_m.envelope.buffer(0.5)
    cells = voronoi_diagram(pts, envelope=env)
    by_arr = {n: [] for n in range(1, 17)}
    for cell in cells.geoms:
        # Each Voronoi cell contains exactly one seed.
        owners = [s for s in seeds if cell.contains(fwd(shapely.Point(s[3], s[2])))]
        if len(owners) != 1:
            sys.exit(f"Voronoi cell with {len(owners)} seeds")
        by_arr[owners[0][0]].append(cell)
    zones = {}
    for n, cs in by_arr.items():
        merged = shapely.coverage_union_all(cs)
        clipped = merged.intersection(area_m)
        zones[n] = inv(clipped)
    return zones


def write_geojson(zones, path):
    feats = []
    for n in range(1, 17):
        g = round_geom(zones[n])
        if g is None:
            sys.exit(f"zone {n} is empty after rounding")
        geom = mapping(g)
        feats.append({
            "type": "Feature",
            "properties": {
                "zone_id": f"132{n:02d}",
                "name": f"{short_name(n)} arrondissement",
                "short": short_name(n),
            },
            "geometry": {"type": geom["type"],
                         "coordinates": round_coords(geom["coordinates"])},
        })
    fc = {
        "type": "FeatureCollection",
        "name": "marseille-arrondissements",
        "source": ("approximate: union of Voronoi cells of quartier seeds "
                   "(zones-seeds.csv) clipped to area.geojson, generated by "
                   "scripts/make-zones.py; not the official boundaries"),
        "features": feats,
    }
    text = json.dumps(fc, ensure_ascii=False, separators=(",", ":"))
    # One feature per line keeps diffs readable.
    text = text.replace('{"type":"Feature",', '\n{"type":"Feature",')
    path.write_text(text + "\n", encoding="utf-8")


def area_km2_fn():
    try:
        from pyproj import Geod
        geod = Geod(ellps="WGS84")
        return (lambda g: abs(geod.geometry_area_perimeter(g)[0]) / 1e6), "geodesic (pyproj, WGS84)"
    except ImportError:
        return (lambda g: fwd(g).area * KM_PER_DEG ** 2), "local equirectangular"


def check(path, area, seeds):
    gj = json.loads(path.read_text(encoding="utf-8"))
    feats = gj["features"]
    ok = True
    if len(feats) != 16:
        print(f"FAIL: {len(feats)} features"); ok = False
    zones = []
    for i, f in enumerate(feats, 1):
        p = f["properties"]
        want = {"zone_id": f"132{i:02d}", "name": f"{short_name(i)} arrondissement",
                "short": short_name(i)}
        if p != want:
            print(f"FAIL: feature {i} properties {p}"); ok = False
        g = shape(f["geometry"])
        if f["geometry"]["type"] not in ("Polygon", "MultiPolygon"):
            print(f"FAIL: zone {i} is a {f['geometry']['type']}"); ok = False
        if not g.is_valid:
            print(f"FAIL: zone {i} invalid: {shapely.is_valid_reason(g)}"); ok = False
        if g.is_empty or g.area == 0:
            print(f"FAIL: zone {i} empty"); ok = False
        polys = [g] if g.geom_type == "Polygon" else list(g.geoms)
        for p_ in polys:
            if not p_.exterior.is_ccw or any(r.is_ccw for r in p_.interiors):
                print(f"FAIL: zone {i} ring orientation"); ok = False
        zones.append(g)
    km2, how = area_km2_fn()
    # Pairwise overlaps.
    worst = 0.0
    for i in range(16):
        for j in range(i + 1, 16):
            if zones[i].intersects(zones[j]):
                a = km2(zones[i].intersection(zones[j])) if not zones[i].intersection(zones[j]).is_empty else 0.0
                worst = max(worst, a)
    union = shapely.union_all(zones)
    a_area, a_union = km2(area), km2(union)
    sym = km2(union.symmetric_difference(area))
    print(f"areas: {how}")
    print(f"largest pairwise overlap: {worst * 1e6:.1f} m²")
    print(f"study area {a_area:.3f} km², union of zones {a_union:.3f} km², "
          f"symmetric difference {sym * 1e6:.0f} m² ({100 * sym / a_area:.4f} %)")
    if worst > 1e-4:  # 100 m²
        print("FAIL: zones overlap"); ok = False
    if sym / a_area > 1e-3:
        print("FAIL: union differs from the study area by more than 0.1 %"); ok = False
    # Seeds must fall in their own zone (or outside the study area).
    for n, q, lat, lon in seeds:
        pt = shapely.Point(lon, lat)
        if area.contains(pt) and not zones[n - 1].buffer(1e-5).contains(pt):
            print(f"WARN: seed {q} ({short_name(n)}) not in its zone")
        if not area.buffer(1e-4).contains(pt):
            print(f"note: seed {q} ({short_name(n)}) is outside the study area")
    print(f"{'zone':<6}{'km²':>8}{'official':>10}{'diff':>8}  parts")
    total = 0.0
    for n, g in enumerate(zones, 1):
        a = km2(g)
        total += a
        off = OFFICIAL_KM2[n]
        d = 100 * (a - off) / off
        flag = "" if abs(d) <= 35 else "  <-- outside ±35 %"
        parts = 1 if g.geom_type == "Polygon" else len(g.geoms)
        print(f"{short_name(n):<6}{a:8.2f}{off:10.1f}{d:+7.0f}%  {parts}{flag}")
    print(f"{'total':<6}{total:8.2f}{sum(OFFICIAL_KM2.values()):10.1f}")
    return ok


def render(path, png, seeds, area):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    gj = json.loads(path.read_text(encoding="utf-8"))
    fig, ax = plt.subplots(figsize=(12, 10))
    cmap = plt.get_cmap("tab20")
    for i, f in enumerate(gj["features"]):
        g = shape(f["geometry"])
        polys = [g] if g.geom_type == "Polygon" else list(g.geoms)
        for p in polys:
            x, y = p.exterior.xy
            ax.fill(x, y, color=cmap(i % 20), alpha=0.55, lw=0)
            ax.plot(x, y, color="k", lw=0.6)
        c = g.representative_point()
        ax.text(c.x, c.y, f["properties"]["short"], ha="center", va="center",
                fontsize=12, weight="bold")
    ax.plot(*area.exterior.xy, color="navy", lw=1.2) if area.geom_type == "Polygon" else None
    ax.scatter([s[3] for s in seeds], [s[2] for s in seeds], s=6, c="k")
    for n, q, lat, lon in seeds:
        ax.text(lon, lat, q, fontsize=4.5, alpha=0.8)
    ax.set_aspect(1 / COS_LAT)
    ax.set_title("Marseille arrondissements (approximate, Voronoi of quartier seeds)")
    fig.savefig(png, dpi=150, bbox_inches="tight")
    print(f"wrote {png}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--area", type=Path, default=GRID / "area.geojson")
    ap.add_argument("--seeds", type=Path, default=GRID / "zones-seeds.csv")
    ap.add_argument("--out", type=Path, default=GRID / "zones.geojson")
    ap.add_argument("--png", type=Path, help="also render a check map (matplotlib)")
    ap.add_argument("--no-check", action="store_true")
    args = ap.parse_args()

    area = load_area(args.area)
    seeds = load_seeds(args.seeds)
    zones = build(area, seeds)
    write_geojson(zones, args.out)
    print(f"wrote {args.out} ({len(seeds)} seeds)")
    ok = True
    if not args.no_check:
        ok = check(args.out, area, seeds)
    if args.png:
        render(args.out, args.png, seeds, area)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
