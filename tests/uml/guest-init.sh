#!/bin/sh
# init of a User-mode Linux guest booted on the host's own root (hostfs, read-only). The host
# kernel here has no 802.1Q module; this guest kernel does, so VLAN data paths run in it.
#
# The kernel command line passes VPCCNI_SHARE=<host dir> (unknown parameters reach init as
# environment). That directory holds `run.sh`, the command to run; the guest writes `output.log`
# and `exit-code` back into it, then powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/run TMPDIR=/run

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs -o mode=0755 run /run
mkdir -p /run/netns /run/share
mount -t hostfs -o "$VPCCNI_SHARE" none /run/share
ip link set lo up

mods=/usr/lib/uml/modules/$(uname -r)
loaded=" "
# Loads a module after the ones it depends on, as modules.dep lists them.
load() {
	case "$loaded" in *" $1 "*) return ;; esac
	deps=$(grep "^$1:" "$mods/modules.dep" | cut -d: -f2)
	for d in $deps; do load "$d"; done
	busybox insmod "$mods/$1" 2>/dev/null
	loaded="$loaded$1 "
}
for m in net/8021q/8021q drivers/net/veth net/ipv4/netfilter/iptable_filter \
	net/ipv4/netfilter/iptable_nat net/ipv4/netfilter/iptable_mangle net/ipv4/netfilter/ipt_REJECT \
	net/netfilter/xt_conntrack net/netfilter/xt_mark net/netfilter/xt_connmark \
	net/netfilter/xt_comment net/netfilter/xt_addrtype net/netfilter/xt_MASQUERADE \
	net/netfilter/xt_multiport net/netfilter/xt_tcpudp net/netfilter/xt_iprange net/netfilter/xt_nat; do
	[ -f "$mods/kernel/$m.ko" ] && load "kernel/$m.ko"
done

cd /run/share
sh /run/share/run.sh > /run/share/output.log 2>&1
echo $? > /run/share/exit-code
sync
halt -f
