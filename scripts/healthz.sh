#!/bin/bash
# healthz PORT: exits 0 when the service's admin port answers /healthz with
# 200 (its Redis works). Bash only, so the runtime image needs no curl.
exec 3<>"/dev/tcp/127.0.0.1/${1:?admin port}" || exit 1
printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3
read -r -t 3 _ status _ <&3
[ "$status" = 200 ]
