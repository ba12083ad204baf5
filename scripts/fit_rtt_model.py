#!/usr/bin/env python3
"""Fits the RTT-from-distance model used by shared/src/place.rs.

Usage: fit_rtt_model.py servers.csv pings.csv
(WonderNetwork global ping statistics: servers with coordinates, directed
city-pair RTTs in ms). Prints intercept, slope and R² for min and avg RTT.
"""
import csv
import math
import sys


def haversine_km(a, b):
    r = 6371.0088
    la1, lo1, la2, lo2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    d = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    return 2 * r * math.asin(math.sqrt(d))


def fit(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    a = my - b * mx
    ss = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, ys))
    st = sum((y - my) ** 2 for y in ys)
    return a, b, 1 - ss / st


def main(servers_path, pings_path):
    servers = {}
    with open(servers_path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                servers[row["id"]] = (float(row["latitude"]), float(row["longitude"]))
            except (KeyError, ValueError):
                pass
    km, rtt_min, rtt_avg = [], [], []
    with open(pings_path, newline="") as f:
        for row in csv.DictReader(f):
            s, d = servers.get(row["source"]), servers.get(row["destination"])
            if s is None or d is None:
                continue
            try:
                mn, av = float(row["min"]), float(row["avg"])
            except ValueError:
                continue
            km.append(haversine_km(s, d))
            rtt_min.append(mn)
            rtt_avg.append(av)
    for name, ys in (("min", rtt_min), ("avg", rtt_avg)):
        a, b, r2 = fit(km, ys)
        print(f"{name}: rtt_ms = {a:.2f} + {b:.5f} * km   (R^2 = {r2:.2f}, n = {len(km)})")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
