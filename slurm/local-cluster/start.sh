#!/usr/bin/env bash
# A real two-node Slurm cluster on this machine, on loopback (for tests and CI; needs root):
#   slurm/local-cluster/start.sh        # installs Debian's slurm + munge if missing, starts munged,
#                                       # slurmctld and two slurmd ("node1", "node2")
#   export SLURM_CONF=$TUNELAB_SLURM_DIR/slurm.conf MASTER_ADDR=127.0.0.1
#   sbatch slurm/train.sbatch ...       # jobs now run on node1/node2
#   slurm/local-cluster/stop.sh
# State, logs and slurm.conf live in $TUNELAB_SLURM_DIR (default /tmp/tunelab-slurm).
set -euo pipefail

DIR=${TUNELAB_SLURM_DIR:-/tmp/tunelab-slurm}
CPUS=${TUNELAB_SLURM_CPUS:-2}          # CPUs each node declares (both nodes share this machine's cores)
CRED_EXPIRE=${TUNELAB_SLURM_CRED_EXPIRE:-10}  # seconds a requeued job waits before it may start again

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  echo "installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }
fi

mkdir -p "$DIR"/{state,spool/node1,spool/node2,log}

# munge: the daemon runs as the munge user; its socket directory must be 0755.
if [ ! -S /run/munge/munge.socket.2 ] || ! munge -n >/dev/null 2>&1; then
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge /etc/munge
  [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged --force
  touch "$DIR/munged.started"   # stop.sh stops munged only then
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
fi

cat > "$DIR/slurm.conf" <<CONF
ClusterName=tunelab-local
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=$CRED_EXPIRE
CryptoType=crypto/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldPort=6817
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
JobRequeue=1
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=3600
KillWait=10
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=node1 NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=17001 CPUs=$CPUS RealMemory=4000 State=UNKNOWN
NodeName=node2 NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=17002 CPUs=$CPUS RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
export SLURM_CONF=$DIR/slurm.conf

pgrep -F "$DIR/slurmctld.pid" >/dev/null 2>&1 || slurmctld -i
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
for node in node1 node2; do
  pgrep -F "$DIR/slurmd-$node.pid" >/dev/null 2>&1 || slurmd -N "$node"
done
for _ in $(seq 150); do
  [ "$(sinfo -h -o '%t' -p debug | sort -u | tr -d '\n')" = "idle" ] && break
  sleep 0.2
done
sinfo -N
echo "local Slurm cluster up: export SLURM_CONF=$SLURM_CONF MASTER_ADDR=127.0.0.1"
