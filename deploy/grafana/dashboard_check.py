"""Checks deploy/grafana/deltaserve.json against a running Prometheus.

Checks the dashboard's structure (a templated Prometheus datasource, the
model_name variable, unique panel ids, the expected rows), waits until
Prometheus has scraped what the caller did (--wait_for, polled), then
evaluates every panel target's expression through Prometheus's HTTP API
with the template variables substituted, and requires each to return at
least one series with a finite value. Prints one line per target and exits
1 naming the panels without data.

With --metric_names_from=FILE (repeatable: alert rules, autoscaling
rules), also requires every deltaserve_ metric those files name to have a
series (a histogram through its _count), and with --rules_loaded=N that
Prometheus has loaded N rules from its rule_files and evaluated each
without error.

  dashboard_check.py --dashboard=deltaserve.json --prometheus=http://H:P \
      --model_name=NAME [--rate_interval=5m] [--wait_for=PROMQL]... \
      [--metric_names_from=FILE]... [--rules_loaded=N]
"""

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request

EXPECTED_ROWS = ["Latency", "Throughput", "Queue", "Memory", "Sessions",
                 "State store"]


def query(prometheus, expr):
    """The result list of an instant query at the current time."""
    url = "%s/api/v1/query?%s" % (prometheus,
                                  urllib.parse.urlencode({"query": expr}))
    with urllib.request.urlopen(url, timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError("query %r failed: %s" % (expr, body))
    data = body["data"]
    if data["resultType"] == "vector":
        return data["result"]
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    raise RuntimeError("query %r gave a %s" % (expr, data["resultType"]))


def regex_escape(value):
    """A variable value in a regex matcher, escaped as Grafana does."""
    return re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", value)


def substitute(expr, model_name, rate_interval):
    out = expr
    for name in ("${model_name}", "$model_name"):
        out = out.replace(name, regex_escape(model_name))
    for name in ("$__rate_interval", "${__rate_interval}", "$__interval",
                 "${__interval}", "$__range", "${__range}"):
        out = out.replace(name, rate_interval)
    if "$" in out:
        raise ValueError("unsubstituted variable in %r" % expr)
    return out


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def check_structure(dash, errors):
    if dash.get("schemaVersion", 0) < 36:
        errors.append("schemaVersion %s < 36" % dash.get("schemaVersion"))
    for key in ("uid", "title"):
        if not dash.get(key):
            errors.append("no dashboard %s" % key)
    inputs = [i.get("name") for i in dash.get("__inputs", [])]
    if "DS_PROMETHEUS" not in inputs:
        errors.append("no DS_PROMETHEUS input")
    variables = {v.get("name"): v for v in dash["templating"]["list"]}
    if "model_name" not in variables:
        errors.append("no model_name template variable")
    elif "model_name" not in json.dumps(variables["model_name"].get("query")):
        errors.append("the model_name variable does not list model_name")
    ids = [p.get("id") for p in walk_panels(dash["panels"])]
    if len(ids) != len(set(ids)) or None in ids:
        errors.append("panel ids missing or repeated: %s" % ids)
    rows = [p["title"] for p in walk_panels(dash["panels"])
            if p.get("type") == "row"]
    for row in EXPECTED_ROWS:
        if row not in rows:
            errors.append("no %r row" % row)
    for p in walk_panels(dash["panels"]):
        if p.get("type") == "row":
            continue
        if p.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
            errors.append("panel %r: datasource is not ${DS_PROMETHEUS}"
                          % p.get("title"))
        if not p.get("targets"):
            errors.append("panel %r has no targets" % p.get("title"))
        for t in p.get("targets", []):
            if not t.get("expr") or not t.get("refId"):
                errors.append("panel %r: a target without expr or refId"
                              % p.get("title"))
            if "model_name" not in t.get("expr", ""):
                errors.append("panel %r %s: not filtered by model_name"
                              % (p.get("title"), t.get("refId")))


def wait_for(prometheus, exprs, deadline_s):
    deadline = time.monotonic() + deadline_s
    pending = list(exprs)
    while pending:
        pending = [e for e in pending if not query(prometheus, e)]
        if not pending:
            return True
        if time.monotonic() > deadline:
            print("timed out waiting for: %s" % pending)
            return False
        time.sleep(0.5)
    return True


def metric_names(path):
    """The deltaserve_ metric names a file uses, histogram suffixes off."""
    with open(path) as f:
        names = set(re.findall(r"deltaserve_[a-z0-9_]*[a-z0-9]", f.read()))
    return sorted({re.sub(r"_(bucket|sum|count)$", "", n) for n in names})


def check_metric_names(prometheus, paths):
    """Names in paths without any series in Prometheus."""
    missing = []
    for path in paths:
        for name in metric_names(path):
            expr = 'count({__name__=~"%s|%s_count"})' % (name, name)
            if not query(prometheus, expr):
                missing.append("%s (%s)" % (name, path.split("/")[-1]))
            else:
                print("ok   metric %s, used in %s" % (name,
                                                      path.split("/")[-1]))
    return missing


def check_rules(prometheus, want, deadline_s):
    """Problems with the loaded rules, once each has been evaluated."""
    deadline = time.monotonic() + deadline_s
    while True:
        with urllib.request.urlopen(prometheus + "/api/v1/rules",
                                    timeout=30) as r:
            groups = json.load(r)["data"]["groups"]
        rules = [rule for g in groups for rule in g["rules"]]
        pending = [r["name"] for r in rules if r.get("health") == "unknown"]
        if len(rules) == want and not pending:
            break
        if time.monotonic() > deadline:
            return ["%d rules loaded, %d wanted; not yet evaluated: %s"
                    % (len(rules), want, pending)]
        time.sleep(0.5)
    problems = []
    for r in rules:
        if r.get("health") != "ok":
            problems.append("rule %s: %s %s" % (r["name"], r.get("health"),
                                                r.get("lastError", "")))
        else:
            print("ok   rule %s evaluates" % r["name"])
    return problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dashboard", required=True)
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--model_name", required=True)
    ap.add_argument("--rate_interval", default="5m")
    ap.add_argument("--wait_for", action="append", default=[])
    ap.add_argument("--wait_seconds", type=float, default=120)
    ap.add_argument("--metric_names_from", action="append", default=[])
    ap.add_argument("--rules_loaded", type=int, default=0)
    args = ap.parse_args()

    with open(args.dashboard) as f:
        dash = json.load(f)
    errors = []
    check_structure(dash, errors)
    if errors:
        print("dashboard structure:\n  " + "\n  ".join(errors))
        return 1
    if not wait_for(args.prometheus, args.wait_for, args.wait_seconds):
        return 1

    failed = []
    count = 0
    for p in walk_panels(dash["panels"]):
        for t in p.get("targets", []):
            count += 1
            expr = substitute(t["expr"], args.model_name, args.rate_interval)
            where = "%s / %s" % (p["title"], t["refId"])
            try:
                result = query(args.prometheus, expr)
            except Exception as e:  # a bad expression is a failure too
                print("FAIL %s: %s" % (where, e))
                failed.append(where)
                continue
            values = [float(r["value"][1]) for r in result]
            finite = [v for v in values if not math.isnan(v)
                      and not math.isinf(v)]
            if not finite:
                print("FAIL %s: %s gave %s" % (where, expr,
                                               values or "no series"))
                failed.append(where)
                continue
            print("ok   %s: %d series, e.g. %g" % (where, len(result),
                                                   finite[0]))
    if failed:
        print("%d of %d panel targets have no data: %s"
              % (len(failed), count, "; ".join(failed)))
        return 1
    print("all %d panel targets have data" % count)
    missing = check_metric_names(args.prometheus, args.metric_names_from)
    if missing:
        print("metrics named in rules but never exported: %s"
              % "; ".join(missing))
        return 1
    if args.rules_loaded:
        problems = check_rules(args.prometheus, args.rules_loaded,
                               args.wait_seconds)
        if problems:
            print("rules:\n  " + "\n  ".join(problems))
            return 1
        print("all %d rules evaluate" % args.rules_loaded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
