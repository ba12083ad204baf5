#!/usr/bin/env node
// Regenerates scheduler/assets/world.svg, the dashboard's basemap, from
// Natural Earth 1:110m country polygons (public domain) as packaged in the
// npm package `world-atlas` 2.x (ISC). Run once; the output is committed
// and embedded in the scheduler binary (scheduler/src/api/dashboard.rs).
//
//   npm install --no-save world-atlas@2        # in any scratch directory
//   node scripts/make-basemap.mjs path/to/node_modules/world-atlas/countries-110m.json
//
// The projection is equirectangular: x = lon + 180, y = 90 - lat, so the
// SVG's viewBox is 0 0 360 180 and the dashboard places a node with the
// same two formulas. Coordinates are rounded to 0.1 degree (the 110m
// geometry is coarser than that anyway).
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const src = process.argv[2] ?? "node_modules/world-atlas/countries-110m.json";
const out =
  process.argv[3] ??
  join(dirname(fileURLToPath(import.meta.url)), "..", "scheduler", "assets", "world.svg");
const topo = JSON.parse(readFileSync(src, "utf8"));

// TopoJSON arcs are quantized and delta-encoded; decode them once.
const [sx, sy] = topo.transform.scale;
const [tx, ty] = topo.transform.translate;
const arcs = topo.arcs.map((arc) => {
  let x = 0;
  let y = 0;
  return arc.map(([dx, dy]) => {
    x += dx;
    y += dy;
    return [x * sx + tx, y * sy + ty];
  });
});

// A ring is a list of arc indexes; a negative index ~i is arc i reversed.
function ring(indexes) {
  const pts = [];
  for (const i of indexes) {
    const a = i < 0 ? arcs[~i].slice().reverse() : arcs[i];
    // Consecutive arcs share their joining point.
    pts.push(...(pts.length ? a.slice(1) : a));
  }
  return pts;
}

const r1 = (v) => Math.round(v * 10) / 10;

// Rings that cross the antimeridian (Russia, Fiji) jump from +180 to -180;
// unwrap them (x may leave 0..360) so no line crosses the whole map, and
// draw a copy shifted by 360 so the part beyond the edge shows on the other
// side. Edges along a pole (Antarctica's closing edge) are real and kept.
function unwrap(pts) {
  const out = [];
  let shift = 0;
  for (let i = 0; i < pts.length; i++) {
    const [lon, lat] = pts[i];
    if (i > 0) {
      const [plon, plat] = pts[i - 1];
      const polar = Math.abs(lat) > 89 && Math.abs(plat) > 89;
      if (!polar && lon - plon > 180) shift -= 360;
      else if (!polar && plon - lon > 180) shift += 360;
    }
    out.push([lon + shift + 180, 90 - lat]);
  }
  return out;
}

function ringPath(pts) {
  let d = "";
  let last = "";
  let n = 0;
  for (const [x, y] of pts) {
    const p = `${r1(x)} ${r1(y)}`;
    if (p === last) continue;
    d += (n === 0 ? "M" : "L") + p;
    last = p;
    n++;
  }
  return n >= 3 ? d + "Z" : "";
}

function ringPaths(lonlat) {
  const pts = unwrap(lonlat);
  let d = ringPath(pts);
  const minX = Math.min(...pts.map((p) => p[0]));
  const maxX = Math.max(...pts.map((p) => p[0]));
  if (maxX > 360) d += ringPath(pts.map(([x, y]) => [x - 360, y]));
  if (minX < 0) d += ringPath(pts.map(([x, y]) => [x + 360, y]));
  return d;
}

const countries = Object.values(topo.objects)[0].geometries;
let d = "";
for (const g of countries) {
  const polys = g.type === "Polygon" ? [g.arcs] : g.type === "MultiPolygon" ? g.arcs : [];
  for (const poly of polys) for (const r of poly) d += ringPaths(ring(r));
}

const svg = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 360 180" width="720" height="360">
<!-- Natural Earth 1:110m admin-0 countries (public domain), via world-atlas (ISC). See ATTRIBUTION.md. -->
<path fill="#dfe6ee" stroke="#aab6c4" stroke-width="0.15" stroke-linejoin="round" fill-rule="evenodd" d="${d}"/>
</svg>
`;
writeFileSync(out, svg);
console.log(`wrote ${out}: ${countries.length} countries, ${svg.length} bytes`);
