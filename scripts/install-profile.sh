#!/usr/bin/env sh
# Make the repository's SLURM profile available by name: `snakemake --profile slurm`.
#
# Snakemake looks a profile name up in the current directory, then in
# ${XDG_CONFIG_HOME:-~/.config}/snakemake/<name>, then /etc/xdg/snakemake/<name>
# (platformdirs' user/site config dirs).  A symlink keeps the installed profile in
# step with the repository's copy.  Usage: scripts/install-profile.sh [name]
set -eu
name="${1:-slurm}"
repo_profile="$(cd "$(dirname "$0")/../profiles/slurm" && pwd)"
target_dir="${XDG_CONFIG_HOME:-$HOME/.config}/snakemake"
target="$target_dir/$name"
mkdir -p "$target_dir"
if [ -e "$target" ] && [ ! -L "$target" ]; then
    echo "install-profile: $target exists and is not a symlink; not replacing it" >&2
    exit 1
fi
ln -sfn "$repo_profile" "$target"
echo "profile '$name' -> $repo_profile (use: snakemake --profile $name)"
