# Shared helpers for the download scripts (sourced, not run).
# fetch URL MD5|- DEST: resumable download (curl -C -), then verified against MD5 ('-' skips the checksum;
# the caller then verifies the unpacked content). A verified file gets a DEST.ok marker and is never fetched again.

die() { echo "error: $*" >&2; exit "${ERR:-1}"; }

need() { command -v "$1" >/dev/null 2>&1 || ERR=2 die "'$1' is required but not installed"; }

check_online() {  # $1: a URL on the server we need
  if ! curl -sfI --max-time 20 -o /dev/null "$1"; then
    ERR=3 die "cannot reach $(echo "$1" | cut -d/ -f1-3). Are you offline? These scripts need the internet;
       everything else in mmkt works offline on the generated ShapeScenes data set (make demo)."
  fi
}

fetch() {
  local url=$1 md5=$2 dest=$3
  if [ -f "$dest.ok" ]; then echo "  have $(basename "$dest") (verified)"; return 0; fi
  echo "  downloading $url"
  if ! curl -fL --retry 5 --retry-delay 5 -C - -o "$dest" "$url"; then
    # A complete file makes the server refuse the byte range; the checksum below decides.
    [ -s "$dest" ] || ERR=3 die "download of $url failed; run the script again to resume"
  fi
  if [ "$md5" != "-" ]; then
    echo "  verifying md5 of $(basename "$dest")"
    local got; got=$(md5sum "$dest" | cut -d' ' -f1)
    if [ "$got" != "$md5" ]; then
      ERR=4 die "$dest: md5 $got, expected $md5. If the download was interrupted, run again to resume;
       if it persists, delete $dest and run again."
    fi
  else
    unzip -tq "$dest" >/dev/null || ERR=4 die "$dest: corrupt zip archive; delete it and run again"
  fi
  touch "$dest.ok"
}

unpack() {  # unpack ZIP into DIR once (marker DIR/.unpacked-NAME)
  local zip=$1 dir=$2 mark; mark="$dir/.unpacked-$(basename "$zip")"
  if [ -f "$mark" ]; then echo "  $(basename "$zip") already unpacked"; return 0; fi
  echo "  unpacking $(basename "$zip")"
  unzip -q -o "$zip" -d "$dir" || ERR=5 die "could not unpack $zip"
  touch "$mark"
}
