#!/usr/bin/env bash
# Writes the PrometheusRule made from deploy/prometheus/alerts.yml to standard
# output. tests/deploy.rs fails when prometheusrule.yaml differs from it:
#   deploy/kubernetes/generate-prometheusrule.sh > deploy/kubernetes/prometheusrule.yaml
set -euo pipefail
cd "$(dirname "$0")"
cat <<'HEADER'
# Generated from deploy/prometheus/alerts.yml by generate-prometheusrule.sh;
# do not edit by hand.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: portstat-exporter
  namespace: monitoring
  labels:
    app.kubernetes.io/name: portstat-exporter
spec:
HEADER
grep -v '^#' ../prometheus/alerts.yml | sed 's/^\(.\)/  \1/'
