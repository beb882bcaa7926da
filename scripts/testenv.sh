#!/usr/bin/env bash
# The end-to-end environment: a strict S3 server (versitygw, with its
# standalone IAM service holding a role session), AWS's IMDS emulator
# (amazon-ec2-metadata-mock, IMDSv2 only) serving that session as role
# credentials, and Debian's nginx in front of the port s3-helper will use.
# Everything listens on 127.0.0.1 only.
#
#   scripts/testenv.sh install          install Debian's packages and the pinned servers (cached)
#   scripts/testenv.sh run -- CMD ...   start, run CMD with S3H_E2E_* set, stop
#   scripts/testenv.sh demo             start, run s3-helper behind nginx until Ctrl-C
#
# Only the PIDs this script started are ever stopped.
set -euo pipefail

VERSITYGW_VERSION=v1.8.0
AEMM_VERSION=v1.13.0
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${S3H_TESTENV_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/s3-helper-testenv/bin}
S3_PORT=${S3H_S3_PORT:-17070}
IMDS_PORT=${S3H_IMDS_PORT:-11338}
NGINX_PORT=${S3H_NGINX_PORT:-18081}
HELPER_PORT=${S3H_HELPER_PORT:-18080}
ADMIN_PORT=${S3H_ADMIN_PORT:-18082}
# Debian packages the build, the tests and the demo need; README.md gives
# the same apt-get line.
APT_PACKAGES=(make gcc git ca-certificates curl nginx prometheus collectd-core systemd dpkg-dev lintian help2man buildah skopeo umoci)
REGION=us-east-1
BUCKET=media
# The replica: another bucket over the same store and IAM, served by a
# second gateway that says it is in another region.
REPLICA_REGION=us-west-2
REPLICA_BUCKET=media-replica
ROLE=sidecar-role
PIDS=()

log() { printf 'testenv: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

install_servers() {
	install_packages
	mkdir -p "$BIN"
	if [[ ! -x $BIN/versitygw ]]; then
		log "installing versitygw $VERSITYGW_VERSION (about a minute on a cold cache)"
		GOBIN=$BIN GOFLAGS=-mod=mod go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
	fi
	if [[ ! -x $BIN/ec2-metadata-mock ]]; then
		log "installing amazon-ec2-metadata-mock $AEMM_VERSION"
		GOBIN=$BIN GOFLAGS=-mod=mod go install "github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock@$AEMM_VERSION"
	fi
}

# install_packages installs the missing APT_PACKAGES, waiting for another
# apt run (unattended-upgrades on a fresh machine) to release its lock.
install_packages() {
	local missing=() p
	for p in "${APT_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	((${#missing[@]})) || return 0
	if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
		die "missing Debian packages: sudo apt-get install -y --no-install-recommends ${APT_PACKAGES[*]}"
	fi
	log "installing ${missing[*]} from Debian's packages"
	local try
	for try in $(seq 60); do
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq && break
		((try < 60)) || die "apt-get update kept failing"
		log "apt-get update failed (another apt holding its lock?); retrying in 5 s"
		sleep 5
	done
	DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	# Debian starts the packaged daemons; the tests run their own copies.
	systemctl disable --now nginx collectd prometheus >/dev/null 2>&1 || true
}

nginx_bin() { command -v nginx 2>/dev/null || echo /usr/sbin/nginx; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# check_ports VAR=PORT...: fail before anything starts when a port is taken,
# naming the variable that moves it.
check_ports() {
	local spec var port busy=()
	for spec in "$@"; do
		var=${spec%%=*} port=${spec#*=}
		port_free "$port" || busy+=("port $port on 127.0.0.1 is in use: set $var to another port")
	done
	((${#busy[@]} == 0)) && return 0
	printf 'testenv: %s\n' "${busy[@]}" >&2
	exit 1
}

# env_ports lists the ports the environment itself uses.
env_ports() {
	echo "S3H_S3_PORT=$S3_PORT" "S3H_S3_PORT=$((S3_PORT + 1))" "S3H_S3_PORT=$((S3_PORT + 2))" "S3H_IMDS_PORT=$IMDS_PORT" "S3H_NGINX_PORT=$NGINX_PORT"
}

# rand_chars SET N: N random characters from SET (no pipe is cut short,
# so pipefail stays quiet).
rand_chars() {
	local r
	r=$(head -c 8192 /dev/urandom | LC_ALL=C tr -dc "$1")
	printf '%s' "${r:0:$2}"
}
rand_upper() { rand_chars 'A-Z0-9' "$1"; }
rand_secret() { rand_chars 'A-Za-z0-9/+' "$1"; }

# wait_for NAME PID CMD...: poll CMD every 0.1 s for 15 s, failing fast if
# PID dies.
wait_for() {
	local name=$1 pid=$2
	shift 2
	for _ in $(seq 150); do
		kill -0 "$pid" 2>/dev/null || { tail -20 "$DIR/$name.log" >&2 || true; die "$name exited during start-up"; }
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	tail -20 "$DIR/$name.log" >&2 || true
	die "$name not ready after 15 s"
}

write_iam() {
	local expires=$1 now policy
	now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
	policy='{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":[\"s3:GetObject\",\"s3:GetObjectVersion\",\"s3:ListBucket\"],\"Resource\":[\"arn:aws:s3:::'$BUCKET'\",\"arn:aws:s3:::'$BUCKET'/*\",\"arn:aws:s3:::'$REPLICA_BUCKET'\",\"arn:aws:s3:::'$REPLICA_BUCKET'/*\"]}]}'
	cat >"$DIR/iam/iam.json.tmp" <<EOF
{
 "users": {}, "accessKeyIndex": {}, "userNameIndex": {}, "oidcProviders": {},
 "roles": {"$ROLE": {"RoleName": "$ROLE", "RoleID": "AROATESTROLE00000001",
   "Arn": "arn:aws:iam::000000000000:role/$ROLE", "CreateDate": "$now",
   "Policies": {"inline": [{"PolicyName": "read-media", "PolicyDocument": "$policy",
     "CreateDate": "$now", "UpdateDate": "$now"}]}}},
 "roleNameIndex": {"$ROLE": "$ROLE"},
 "sessions": {"$AKID": {"accessKeyId": "$AKID", "secretAccessKey": "$SECRET", "sessionToken": "$TOKEN",
   "roleArn": "arn:aws:iam::000000000000:role/$ROLE", "roleName": "$ROLE", "roleId": "AROATESTROLE00000001",
   "roleSessionName": "testenv", "provider": "testenv", "audience": "testenv", "subject": "testenv",
   "createDate": "$now", "expiration": "$expires"}}
}
EOF
	mv "$DIR/iam/iam.json.tmp" "$DIR/iam/iam.json"
}

write_imds_config() {
	local expires=$1
	cat >"$DIR/imds.json.tmp" <<EOF
{"imdsv2": true,
 "server": {"hostname": "127.0.0.1", "port": "$IMDS_PORT"},
 "metadata": {
  "paths": {"iam-security-credentials": "/latest/meta-data/iam/security-credentials/$ROLE"},
  "values": {"iam-security-credentials-role": "$ROLE",
   "iam-security-credentials": {"Code": "Success", "LastUpdated": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
    "Type": "AWS-HMAC", "AccessKeyId": "$AKID", "SecretAccessKey": "$SECRET", "Token": "$TOKEN",
    "Expiration": "$expires"}}}}
EOF
	mv "$DIR/imds.json.tmp" "$DIR/imds.json"
}

# put KEY FILE [BUCKET PORT REGION]: upload with the root account so the
# object gets an ETag.
put() {
	curl -sS -f -o /dev/null --aws-sigv4 "aws:amz:${4:-$REGION}:s3" --user "$ROOT_AK:$ROOT_SK" \
		-H "x-amz-content-sha256: $(sha256sum "$2" | cut -d' ' -f1)" -T "$2" \
		"http://127.0.0.1:${3:-$S3_PORT}/${BUCKET_OF_PUT:-$BUCKET}/$1"
}

seed() {
	mkdir -p "$DIR/seed"
	printf 'Hello from a private bucket.\n' >"$DIR/seed/hello.txt"
	head -c 1048576 /dev/urandom >"$DIR/seed/big.bin"
	# A minimal mp4 container (ftyp + mdat boxes): enough to show Range
	# reads, not a playable video.
	{
		printf '\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2'
		printf '\x00\x01\x00\x08mdat'
		head -c 65528 /dev/urandom
	} >"$DIR/seed/sample.mp4"
	# Large enough that socket buffers cannot hide a paused client.
	head -c 50331648 /dev/urandom >"$DIR/seed/large.bin"
	for f in hello.txt big.bin sample.mp4 large.bin; do put "$f" "$DIR/seed/$f"; done
	# The replica holds copies (with ETags of its own), put through the
	# second region's gateway; large.bin is not replicated.
	for f in hello.txt big.bin sample.mp4; do
		BUCKET_OF_PUT=$REPLICA_BUCKET put "$f" "$DIR/seed/$f" "$((S3_PORT + 2))" "$REPLICA_REGION"
	done
	mkdir -p "$DATA/$BUCKET/dir/sub"
	printf 'nested\n' >"$DATA/$BUCKET/dir/sub/nested.txt"
}

start() {
	install_servers
	DIR=${S3H_TESTENV_DIR:-$(mktemp -d /tmp/s3h-testenv.XXXXXX)}
	DIR=$(cd "$DIR" && pwd)
	DATA=$DIR/s3data
	mkdir -p "$DATA/$BUCKET" "$DATA/$REPLICA_BUCKET" "$DIR/iam" "$DIR/home" "$DIR/nginx/logs" "$DIR/nginx/tmp"
	ROOT_AK=AKIATESTROOT$(rand_upper 8)
	ROOT_SK=$(rand_secret 40)
	AKID=ASIA$(rand_upper 16)
	SECRET=$(rand_secret 40)
	TOKEN=IQoJ$(rand_secret 200)
	local expires
	expires=$(date -u -d '+6 hours' +%Y-%m-%dT%H:%M:%SZ)
	write_iam "$expires"
	write_imds_config "$expires"

	"$BIN/versitygw" -a "$ROOT_AK" -s "$ROOT_SK" -p "127.0.0.1:$((S3_PORT + 1))" --health /health --quiet \
		iam --dir "$DIR/iam" --private-ports "$DIR/iam.sock" >"$DIR/iam.log" 2>&1 &
	PIDS+=($!)
	wait_for iam "$!" test -S "$DIR/iam.sock"
	"$BIN/versitygw" -a "$ROOT_AK" -s "$ROOT_SK" -p "127.0.0.1:$S3_PORT" --region "$REGION" --health /health \
		--keep-alive --quiet --access-log "$DIR/s3-access.log" --iam-standalone-endpoint "$DIR/iam.sock" \
		posix "$DATA" >"$DIR/s3.log" 2>&1 &
	PIDS+=($!)
	wait_for s3 "$!" curl -sf "http://127.0.0.1:$S3_PORT/health"
	"$BIN/versitygw" -a "$ROOT_AK" -s "$ROOT_SK" -p "127.0.0.1:$((S3_PORT + 2))" --region "$REPLICA_REGION" --health /health \
		--keep-alive --quiet --iam-standalone-endpoint "$DIR/iam.sock" posix "$DATA" >"$DIR/s3-west.log" 2>&1 &
	PIDS+=($!)
	wait_for s3-west "$!" curl -sf "http://127.0.0.1:$((S3_PORT + 2))/health"
	HOME=$DIR/home "$BIN/ec2-metadata-mock" -c "$DIR/imds.json" -w >"$DIR/imds.log" 2>&1 &
	IMDS_PID=$!
	PIDS+=("$IMDS_PID")
	wait_for imds "$IMDS_PID" curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "http://127.0.0.1:$IMDS_PORT/latest/api/token"

	sed -e "s|@NGINX_PORT@|$NGINX_PORT|g" -e "s|@HELPER_PORT@|$HELPER_PORT|g" \
		"$ROOT/testdata/nginx.conf" >"$DIR/nginx/nginx.conf"
	"$(nginx_bin)" -e stderr -p "$DIR/nginx/" -c "$DIR/nginx/nginx.conf" -g 'daemon off;' >"$DIR/nginx.log" 2>&1 &
	PIDS+=($!)
	wait_for nginx "$!" bash -c "exec 3<>/dev/tcp/127.0.0.1/$NGINX_PORT"

	seed
	export S3H_E2E_DIR=$DIR S3H_E2E_DATA=$DATA S3H_E2E_BUCKET=$BUCKET S3H_E2E_REGION=$REGION S3H_E2E_ROLE=$ROLE
	export S3H_E2E_S3_ENDPOINT=http://127.0.0.1:$S3_PORT S3H_E2E_IMDS_ENDPOINT=http://127.0.0.1:$IMDS_PORT
	export S3H_E2E_REPLICA_ENDPOINT=http://127.0.0.1:$((S3_PORT + 2)) S3H_E2E_REPLICA_BUCKET=$REPLICA_BUCKET S3H_E2E_REPLICA_REGION=$REPLICA_REGION
	export S3H_E2E_NGINX_URL=http://127.0.0.1:$NGINX_PORT S3H_E2E_HELPER_FOR_NGINX=127.0.0.1:$HELPER_PORT
	export S3H_E2E_ACCESS_KEY_ID=$AKID S3H_E2E_SECRET_ACCESS_KEY=$SECRET S3H_E2E_SESSION_TOKEN=$TOKEN
	export S3H_E2E_ROOT_ACCESS_KEY_ID=$ROOT_AK S3H_E2E_ROOT_SECRET_ACCESS_KEY=$ROOT_SK
	export S3H_E2E_IAM_FILE=$DIR/iam/iam.json S3H_E2E_IMDS_CONFIG=$DIR/imds.json
	export S3H_E2E_NGINX_ACCESS_LOG=$DIR/nginx/logs/access.log
	log "ready in $DIR: S3 $S3H_E2E_S3_ENDPOINT, IMDS $S3H_E2E_IMDS_ENDPOINT, nginx $S3H_E2E_NGINX_URL -> $HELPER_PORT"
}

stop() {
	local pid
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for _ in $(seq 50); do
		local alive=0
		for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
		((alive)) || break
		sleep 0.1
	done
	for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
	PIDS=()
}

# imds_alive fails loudly if the emulator died: it crashes on concurrent
# token requests, and a dead emulator would make later failures confusing.
imds_alive() {
	kill -0 "$IMDS_PID" 2>/dev/null && return 0
	log "the IMDS emulator died during the run (concurrent token requests crash it); its log:"
	tail -30 "$DIR/imds.log" >&2 || true
	return 1
}

cmd_run() {
	[[ ${1:-} == -- ]] && shift
	[[ $# -gt 0 ]] || die "usage: $0 run -- COMMAND [ARGS...]"
	# shellcheck disable=SC2046
	check_ports $(env_ports)
	trap stop EXIT
	start
	local status=0
	"$@" || status=$?
	imds_alive || status=1
	stop
	trap - EXIT
	[[ -n ${S3H_TESTENV_KEEP:-} ]] || rm -rf "$DIR"
	return "$status"
}

cmd_demo() {
	# shellcheck disable=SC2046
	check_ports $(env_ports) "S3H_HELPER_PORT=$HELPER_PORT" "S3H_ADMIN_PORT=$ADMIN_PORT"
	trap 'stop; [[ -n ${S3H_TESTENV_KEEP:-} || -z ${DIR:-} ]] || rm -rf "$DIR"' EXIT
	start
	go build -o "$DIR/s3-helper" "$ROOT"
	"$DIR/s3-helper" -listen "127.0.0.1:$HELPER_PORT" -bucket "$BUCKET" -region "$REGION" \
		-endpoint "$S3H_E2E_S3_ENDPOINT" -imds-endpoint "$S3H_E2E_IMDS_ENDPOINT" \
		-admin "127.0.0.1:$ADMIN_PORT" -access-log &
	PIDS+=($!)
	wait_for_helper
	cat <<EOF

s3-helper is serving bucket '$BUCKET' from versitygw on 127.0.0.1:$HELPER_PORT,
with role credentials from the IMDS emulator, and nginx on 127.0.0.1:$NGINX_PORT in front.
Try, in another terminal:

  curl -i http://127.0.0.1:$HELPER_PORT/hello.txt                        # GET
  curl -s -r 0-23 http://127.0.0.1:$HELPER_PORT/sample.mp4 | od -c | head -2  # Range GET (206)
  curl -I http://127.0.0.1:$HELPER_PORT/big.bin                          # HEAD
  curl -i http://127.0.0.1:$HELPER_PORT/no/such/key                      # 404
  curl -i -X PUT --data x http://127.0.0.1:$HELPER_PORT/hello.txt        # 405: read-only
  curl -i http://127.0.0.1:$NGINX_PORT/dir/sub/nested.txt                # through nginx
  curl -s http://127.0.0.1:$ADMIN_PORT/healthz                                 # health

Press Ctrl-C to stop everything.
EOF
	wait "${PIDS[-1]}" || true
}

wait_for_helper() {
	for _ in $(seq 100); do
		curl -sf "http://127.0.0.1:$ADMIN_PORT/healthz" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	die "s3-helper did not become healthy"
}

case ${1:-} in
install) install_servers ;;
run) shift; cmd_run "$@" ;;
demo) cmd_demo ;;
*) die "usage: $0 install | run -- COMMAND... | demo" ;;
esac
