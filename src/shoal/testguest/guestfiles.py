"""The small files the test guest is made of, as string constants.

`build.py` writes them into the initramfs and the root disk. Placeholders are `@NAME@` (the
scripts are full of `$`, so neither str.format nor string.Template fit) and are filled in by
`render`. Changing any of these changes the recipe hash, so a new guest gets built.
"""

import re

# PID 1 of the initramfs: load the few modules the cloud kernel keeps outside its image, mount
# the root disk and switch_root into it. @MODULES@ is the module list in dependency order. On
# failure it exits, the kernel panics and `panic=-1` with QEMU's -no-reboot ends the VM, unless
# the kernel command line has `shoal.rescue`, which gives a shell on the console instead.
INITRAMFS_INIT = """\
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

root=/dev/vda
rootfstype=ext4
rootflags=rw
rescue=
read -r cmdline </proc/cmdline
for arg in $cmdline; do
    case "$arg" in
        root=*) root="${arg#root=}" ;;
        rootfstype=*) rootfstype="${arg#rootfstype=}" ;;
        ro) rootflags=ro ;;
        rw) rootflags=rw ;;
        shoal.rescue) rescue=1 ;;
    esac
done

fail() {
    echo "shoal-test-guest: initramfs: $*"
    if [ -n "$rescue" ]; then
        exec sh
    fi
    exit 1
}

for module in @MODULES@; do
    insmod "/lib/modules/$module.ko" || fail "insmod $module failed"
done

tries=0
while [ ! -b "$root" ]; do
    tries=$((tries + 1))
    [ "$tries" -gt 1000 ] && fail "$root did not appear"
    usleep 10000
done
mount -t "$rootfstype" -o "$rootflags" "$root" /newroot || fail "cannot mount $root"
for dir in dev proc sys; do
    mount --move "/$dir" "/newroot/$dir"
done
exec switch_root /newroot /sbin/init
"""

# busybox init's table on the root disk. dropbear runs in the foreground under SSHD_LOOP, which
# init respawns (its log on the console); `announce` prints the ready line once it listens. The
# console shell starts when Enter is pressed on ttyS0 (askfirst, respawned on exit), which keeps
# it from competing with sshd for the one vCPU at boot; so does the one on the screen (tty1).
INITTAB = """\
::sysinit:/etc/init.d/rcS
::once:/etc/init.d/announce
::respawn:/usr/lib/shoal/sshd-loop
ttyS0::askfirst:-/bin/sh
tty1::askfirst:-/bin/sh
::shutdown:/etc/init.d/rcK
"""

RCS = """\
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
[ -e /proc/self ] || mount -t proc proc /proc
[ -d /sys/kernel ] || mount -t sysfs sysfs /sys
[ -c /dev/null ] || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
ln -s /proc/self/fd /dev/fd
hostname -F /etc/hostname
ip link set lo up
ip addr add @ADDRESS@/@PREFIX@ dev eth0
ip link set eth0 up
ip route add default via @GATEWAY@
# The ACPI power button (QMP system_powerdown) arrives as an input event; acpid runs
# /etc/acpi/PWRF/00000080 for it, which powers off.
acpid -l /dev/null
"""

# A shell condition, true once a socket listens on TCP port 22 (0016; state 0A is LISTEN).
_SSH_LISTENS = (
    "grep -qE '^ *[0-9]+: [0-9A-F]+:0016 [0-9A-F]+:[0-9A-F]+ 0A ' /proc/net/tcp /proc/net/tcp6"
    " 2>/dev/null"
)

ANNOUNCE = """\
#!/bin/sh
tries=0
while ! @SSH_LISTENS@; do
    tries=$((tries + 1))
    if [ "$tries" -gt 1500 ]; then
        echo "shoal-test-guest: ssh failed to start"
        exit 1
    fi
    usleep 20000
done
echo "shoal-test-guest: ssh ready on @ADDRESS@:22"
""".replace("@SSH_LISTENS@", _SSH_LISTENS)

# Where the shoal agent looks for an image's fresh-identity hook, and the program it calls.
# dropbear again a tenth of a second after it exits: REFRESH_IDENTITY stops the listener to have
# it start with new host keys, and init would wait a whole second before respawning it.
SSHD_LOOP_PATH = "/usr/lib/shoal/sshd-loop"
SSHD_LOOP = """\
#!/bin/sh
while :; do
    /usr/sbin/dropbear -F -E -s -p 22 -r /etc/dropbear/dropbear_ed25519_host_key -P /run/dropbear.pid
    usleep 100000
done
"""
REFRESH_IDENTITY_PATH = "/usr/lib/shoal/refresh-identity"
RESEED_CRNG_PATH = "/usr/lib/shoal/reseed-crng"  # reseed.py's program

# The fresh-identity hook. The shoal agent runs it as root over SSH (no arguments, SHOAL_VM_NAME
# set to the VM's name, which this guest does not need) after it restored the VM from saved
# memory and itself set the hostname and the clock and wrote fresh bytes into /dev/urandom.
# Clones of one memory image share the kernel's CRNG state and dropbear's host key: reseed the
# one, replace the other, and restart dropbear's listener so that new connections see the new
# key. Only the listener is replaced: each connection is served by a child of its own, in a
# session of its own, so the one running this hook lives on; SSHD_LOOP starts the new listener
# once the old one is gone. Exits 0 only if all of it worked; otherwise
# 1, after saying what failed on stderr.
REFRESH_IDENTITY = """\
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
failed=

fail() {
    echo "refresh-identity: $*" >&2
    failed=1
}

# Reseed first, so that the new keys come from the reseeded CRNG.
reseed_crng() {
    @RESEED_CRNG@
    status=$?
    # Its exit status is the ioctl's (or open's) errno; 126 and 127 are the shell's.
    [ "$status" -eq 0 ] || fail "reseeding the CRNG failed: @RESEED_CRNG@ exited $status"
}

# dropbearkey refuses to overwrite a file: make each key under a temporary name, then rename it.
new_host_keys() {
    for key in /etc/dropbear/dropbear_*_host_key; do
        [ -f "$key" ] || { fail "no host keys in /etc/dropbear"; return 1; }
        type=${key#/etc/dropbear/dropbear_}
        type=${type%_host_key}
        rm -f "$key.new"
        if ! out=$(dropbearkey -t "$type" -f "$key.new" 2>&1); then
            rm -f "$key.new"
            fail "dropbearkey -t $type failed: $out"
            return 1
        fi
        mv -f "$key.new" "$key" || { fail "cannot replace $key"; return 1; }
    done
}

# Stop the listener; done once SSHD_LOOP's new one has written its pid file (it does that after
# binding its sockets) and port 22 listens.
restart_listener() {
    old=$(cat /run/dropbear.pid 2>/dev/null)
    if [ -z "$old" ] || [ "$(readlink "/proc/$old/exe")" != /usr/sbin/dropbear ]; then
        fail "no dropbear listener to restart (/run/dropbear.pid: '$old')"
        return 1
    fi
    kill "$old" || { fail "cannot stop the dropbear listener ($old)"; return 1; }
    tries=0
    while :; do
        new=$(cat /run/dropbear.pid 2>/dev/null)
        if [ -n "$new" ] && [ "$new" != "$old" ] && @SSH_LISTENS@; then
            return 0
        fi
        tries=$((tries + 1))
        if [ "$tries" -gt 300 ]; then
            fail "no new dropbear listener on port 22 within 30 s"
            return 1
        fi
        usleep 100000
    done
}

reseed_crng
new_host_keys && restart_listener
[ -z "$failed" ]
""".replace("@SSH_LISTENS@", _SSH_LISTENS).replace("@RESEED_CRNG@", RESEED_CRNG_PATH)

RCK = """\
#!/bin/sh
echo "shoal-test-guest: powering off"
sync
mount -o remount,ro / 2>/dev/null
"""

POWER_BUTTON = """\
#!/bin/sh
exec /sbin/poweroff
"""

PROFILE = """\
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PS1='\\u@\\h:\\w\\$ '
"""

PASSWD = "root:x:0:0:root:/root:/bin/sh\n"
SHADOW = "root:*:19000:0:99999:7:::\n"
GROUP = "root:x:0:\ntty:x:5:\n"
SHELLS = "/bin/sh\n/bin/ash\n"
HOSTNAME = "shoal-test-guest\n"
HOSTS = "127.0.0.1\tlocalhost\n127.0.1.1\tshoal-test-guest\n"
RESOLV_CONF = "nameserver @DNS@\n"


def render(template: str, **values: str) -> str:
    """Fill `@NAME@` placeholders; every placeholder in the template must be given."""
    out = template
    for name, value in values.items():
        out = out.replace(f"@{name}@", value)
    left = re.findall(r"@[A-Z_]+@", out)
    if left:
        raise ValueError(f"unfilled placeholders: {', '.join(left)}")
    return out


ALL = (
    INITRAMFS_INIT,
    INITTAB,
    RCS,
    ANNOUNCE,
    REFRESH_IDENTITY,
    SSHD_LOOP,
    RCK,
    POWER_BUTTON,
    PROFILE,
    PASSWD,
    SHADOW,
    GROUP,
    SHELLS,
    HOSTNAME,
    HOSTS,
    RESOLV_CONF,
)
