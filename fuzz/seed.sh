#!/usr/bin/env bash
# Fills fuzz/corpus/TARGET/ with seed inputs: every file of ../shared/corpus for the digest
# (and, as stdin, for the sendmail filter), SMTP sessions in each target's input layout,
# and the command lines real callers use. Idempotent; the fuzzer adds to these directories.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
corpus="$here/corpus"

# ../shared sits beside the repository (a worktree may be deeper): walk up to find it.
dir="$here/.."
shared=""
while [ "$(cd "$dir" && pwd)" != / ]; do
  if [ -f "$dir/shared/DESIGN.md" ]; then shared="$(cd "$dir/shared" && pwd)"; break; fi
  dir="$dir/.."
done
if [ -z "$shared" ]; then
  echo "seed.sh: no shared/DESIGN.md above $here" >&2
  exit 1
fi

for t in smtp_raw smtp_alphabet smtp_split digest sendmail_args sendmail_intake spool_maildrop; do
  mkdir -p "$corpus/$t"
done

# seed TARGET NAME: stdin becomes the seed file.
seed() { cat >"$corpus/$1/$2"; }

n=0
while IFS= read -r -d '' f; do
  n=$((n + 1))
  cp "$f" "$corpus/digest/shared-$n"
  # sendmail_intake: byte 0 = flags (0: no -i), byte 1 = 0 seed bytes, then stdin.
  { printf '\000\000'; cat "$f"; } | seed sendmail_intake "shared-$n"
done < <(find "$shared/corpus" -type f ! -name README.md -print0 | sort -z)

sessions=(
  'EHLO client.test\r\nMAIL FROM:<a@example.org> SIZE=20\r\nRCPT TO:<root>\r\nDATA\r\nSubject: hi\r\n\r\nbody\r\n..dot\r\n.\r\nQUIT\r\n'
  'HELO x\r\nMAIL FROM: <>\r\nRCPT TO:<root>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<third>\r\nBDAT 5\r\nhelloBDAT 0 LAST\r\nQUIT\r\n'
  'EHLO x\nMAIL FROM:<a@b> BODY=8BITMIME SMTPUTF8\nRCPT TO:<j\xc3\xb6rg@b>\nDATA\n\xff\xfe\n.\nRSET\nNOOP\nVRFY root\nEXPN x\nHELP\nSTARTTLS\nAUTH PLAIN\nQUIT\n'
  'MAIL FROM:<a@b>\r\nRCPT TO:<root>\r\nBDAT 3\r\nabcRSET\r\nMAIL FROM:<a@b>\r\nRCPT TO:<root>\r\nBDAT 200 LAST\r\nQUIT\r\n'
  'EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<root>\r\nDATA\r\nFAIL-COMMIT\r\n.\r\nMAIL FROM:<a@b> SIZE=999999999999\r\nQUIT\r\n'
)
i=0
for s in "${sessions[@]}"; do
  i=$((i + 1))
  # smtp_raw: byte 0 picks the limits (small / default).
  { printf '\000'; printf '%b' "$s"; } | seed smtp_raw "small-$i"
  { printf '\001'; printf '%b' "$s"; } | seed smtp_raw "default-$i"
  # smtp_split: byte 0 (limits, raw), byte 1 = 3 seed bytes (chunk lengths 2, 8, 31).
  { printf '\000\003\001\007\036'; printf '%b' "$s"; } | seed smtp_split "small-$i"
  { printf '\001\003\001\007\036'; printf '%b' "$s"; } | seed smtp_split "default-$i"
done
# smtp_alphabet: byte 0 picks the limits, then one token number per byte (the indexes of
# ALPHABET in src/lib.rs): a DATA message, a BDAT message, parameters with UTF-8 and a
# failing commit, and a BDAT size crossing a small limit.
alphabet=(
  '\074\067\070\071\042\075\023\042\044\011\023'
  '\074\067\070\072\042\042\042\042\042\073\011\023'
  '\001\075\023\002\017\042\021\043\020\026\027\041\023\003\017\052\021\043\020\023\004\023\063\044\007\023\011\023'
  '\067\070\005\035\034\024\042\042\042\042\042\042\042\042\042\042\005\034\006\024\011\024'
)
i=0
for s in "${alphabet[@]}"; do
  i=$((i + 1))
  printf '%b' "\\000$s" | seed smtp_alphabet "small-$i"
  printf '%b' "\\001$s" | seed smtp_alphabet "default-$i"
done

# sendmail_args: byte 0 picks argv[0] (0 = /usr/sbin/sendmail, 2 = mailq), NUL between words.
argvs=(
  '\000-t\000-i'
  '\000-oi\000-f\000root@example.org\000-FCron Daemon\000--\000a@b, Bob <bob@example.org>'
  '\000-bs'
  '\002'
  '\000-bv\000root'
  '\000-q30m'
  '\000-qRexample.org\000-v\000-v'
  '\000-odi\000-oem\000-N\000never\000-R\000hdrs\000-B8BITMIME\000root'
  '\000--config\000/etc/smtp_bridge.conf\000-r\000<>\000root'
  '\000-t\000-bv'
  '\000-bt'
  '\000-f'
)
i=0
for a in "${argvs[@]}"; do
  i=$((i + 1))
  printf '%b' "$a" | seed sendmail_args "argv-$i"
done

# sendmail_intake: byte 0 = -i (bit 0), byte 1 = seed length, then seed, then stdin.
printf '\000\002\003\011From root Tue Nov 24 10:00:00 2026\n>From x\nSubject: s\r\nTo: a@b\r\n\r\nline\r\n.\r\nafter\n' | seed sendmail_intake "mbox-dot"
printf '\001\000To: a@b,\n c@d\nResent-To: e@f\n\n.\nstill here\r\r\n.' | seed sendmail_intake "ignore-dots"
# spool_maildrop: byte 0 picks the entry's name, then a maildrop file as the shim writes it
# (header, blank line, message), one claiming another origin and a future arrival, one
# with escapes, and one with a full name (`sendmail -F`).
printf '\000smtp_bridge-spool 1\narrival 1795529786.123456\norigin local 1000 alice\nsender alice@example.org\nrcpt root\n\nSubject: hi\n\nbody\n' | seed spool_maildrop "plain"
printf '\001smtp_bridge-spool 1\narrival 99999999999.000000\norigin smtp 127.0.0.1:25 forged\nsender <>\nrcpt a%%20b@example.org\nrcpt %%C3%%A9@x\n\nx' | seed spool_maildrop "claims"
printf '\002smtp_bridge-spool 1\r\narrival 1.000000\n\n' | seed spool_maildrop "broken"
printf '\000smtp_bridge-spool 1\narrival 1795529786.123456\norigin local 1000 alice\nfullname Cron%%20Daemon%%0A%%1B\nsender alice@example.org\nrcpt root\n\nx' | seed spool_maildrop "fullname"
echo "seeded $corpus (shared corpus: $n files)"
