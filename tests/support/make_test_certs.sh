#!/usr/bin/env bash
# Makes a throwaway CA and a TLS server certificate for the test broker.
#
#   make_test_certs.sh OUTDIR [IP ...]
#
# Writes OUTDIR/ca.crt, ca.key, server.crt, server.key. The server certificate
# is valid for localhost, 127.0.0.1 and every extra IP given (the stock SDK
# tests listen on a random 127.x.y.z, because the SDKs always use port 8883).
# Everything is made at test time, lives for 2 days and is never committed.
set -euo pipefail

if (($# < 1)); then
  echo "usage: $0 OUTDIR [IP ...]" >&2
  exit 2
fi
out=$1
shift
mkdir -p "$out"
cd "$out"

san="DNS:localhost,IP:127.0.0.1"
for ip in "$@"; do
  san+=",IP:$ip"
done

openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=devicebound test CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "subjectKeyIdentifier=hash" \
  -out ca.crt

openssl ecparam -name prime256v1 -genkey -noout -out server.key 2>/dev/null
openssl req -new -key server.key -subj "/CN=localhost" -out server.csr
cat > server.ext <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EXT
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 2 \
  -extfile server.ext -out server.crt 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 600 ca.key
