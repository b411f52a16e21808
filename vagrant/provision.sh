#!/usr/bin/env bash
# Provisions one VM of the Vagrant cluster: runtime packages, corten binaries, systemd units.
# Usage: provision.sh NAME IP MASTER_IP
set -euo pipefail
name="$1"; ip="$2"; master="$3"

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends containerd runc containernetworking-plugins \
  iproute2 nftables

install -m 0755 /opt/corten/bin/corten-server /opt/corten/bin/corten-agent /usr/local/bin/
install -d /opt/cni/bin /var/lib/corten/agent/images
install -m 0755 /opt/corten/bin/corten-cni /opt/cni/bin/corten-cni
ln -sf /usr/lib/cni/loopback /opt/cni/bin/loopback

mkdir -p /etc/corten
cat > /etc/corten/agent.env <<ENV
CORTEN_NODE_NAME=${name}
CORTEN_NODE_IP=${ip}
CORTEN_SERVER=https://${master}:6443
ENV

if [ "${ip}" = "${master}" ]; then
  install -m 0644 /opt/corten/systemd/corten-server.service /etc/systemd/system/
  systemctl daemon-reload
  systemctl enable --now corten-server
fi
install -m 0644 /opt/corten/systemd/corten-agent.service /etc/systemd/system/
systemctl daemon-reload
systemctl enable --now containerd corten-agent
