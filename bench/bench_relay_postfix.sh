#!/bin/sh
# A throw-away Postfix instance for bench_relay_accept.py's comparison: smtpd on 127.0.0.1:2526,
# accepting into its own queue (fsynced by cleanup) and holding every message, so nothing is sent.
#   sudo bench/bench_relay_postfix.sh start   # needs Debian's postfix package, run as root
#   .venv/bin/python bench/bench_relay_accept.py --postfix-port 2526
#   sudo bench/bench_relay_postfix.sh stop
set -eu
CONF=/tmp/smtp-oauth-bench-postfix
QUEUE=/var/spool/postfix-bench   # on the same disk as the project's spool

case "${1:-}" in
start)
    rm -rf "$CONF" && mkdir -p "$CONF" "$QUEUE"
    cp /etc/postfix/master.cf "$CONF/master.cf"
    sed -i 's/^smtp \{1,\}inet .*/127.0.0.1:2526 inet n - n - - smtpd/' "$CONF/master.cf"
    cat > "$CONF/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $QUEUE
data_directory = /var/lib/postfix-bench
myhostname = bench.localdomain
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_data_restrictions = check_client_access static:HOLD
message_size_limit = 36700160
maillog_file = /var/log/postfix-bench.log
CF
    mkdir -p /var/lib/postfix-bench && chown postfix /var/lib/postfix-bench
    # Postfix only accepts a second configuration directory that the default one names.
    postconf -e "alternate_config_directories = $CONF"
    postfix -c "$CONF" check
    postfix -c "$CONF" start
    ;;
stop)
    postfix -c "$CONF" stop || true
    postsuper -c "$CONF" -d ALL hold >/dev/null 2>&1 || true
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 64
    ;;
esac
