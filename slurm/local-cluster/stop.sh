#!/usr/bin/env bash
# Stops the cluster that start.sh started (slurmd x2, slurmctld; munged only if start.sh started it).
set -uo pipefail
DIR=${TUNELAB_SLURM_DIR:-/tmp/tunelab-slurm}
export SLURM_CONF=$DIR/slurm.conf
[ -f "$SLURM_CONF" ] && scancel --user="$(id -un)" >/dev/null 2>&1
for pidfile in "$DIR"/slurmd-node1.pid "$DIR"/slurmd-node2.pid "$DIR"/slurmctld.pid; do
  [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
done
for _ in $(seq 50); do
  alive=0
  for pidfile in "$DIR"/slurmd-node1.pid "$DIR"/slurmd-node2.pid "$DIR"/slurmctld.pid; do
    [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && alive=1
  done
  [ $alive = 0 ] && break
  sleep 0.2
done
if [ -f "$DIR/munged.started" ]; then  # start.sh started munged: stop it (one that ran before is left alone)
  runuser -u munge -- /usr/sbin/munged --stop >/dev/null 2>&1 || true
  rm -f "$DIR/munged.started"
fi
rm -rf "$DIR/state" "$DIR/spool"
echo "local Slurm cluster stopped"
