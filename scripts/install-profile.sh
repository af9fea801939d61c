#!/usr/bin/env sh
# Make the repository's SLURM profile available by name: `snakemake --profile slurm`.
#
# Snakemake looks a profile name up in the current directory, then in
# ${XDG_CONFIG_HOME:-~/.config}/snakemake/<name>, then /etc/xdg/snakemake/<name>
# (platformdirs' user/site config dirs).  A symlink keeps the installed profile in
# step with the repository's copy.  Usage: scripts/install-profile.sh [name]
#
# The profile name is global to the user: an existing profile (another clone's link, or
# a profile directory of the user's own) is left as it is and reported; only a dangling
# link (its clone is gone) is replaced, saying what it pointed to.
set -eu
name="${1:-slurm}"
repo_profile="$(cd "$(dirname "$0")/../profiles/slurm" && pwd -P)"
target_dir="${XDG_CONFIG_HOME:-$HOME/.config}/snakemake"
target="$target_dir/$name"
use_by_path="use this clone's profile by path: snakemake --profile $repo_profile"
mkdir -p "$target_dir"
if [ -L "$target" ]; then
    old="$(readlink "$target")"
    if [ -e "$target" ]; then
        if [ "$(cd "$target" && pwd -P)" = "$repo_profile" ]; then
            echo "install-profile: profile '$name' already installed: $target -> $old"
        else
            echo "install-profile: profile '$name' exists and is left as it is: $target -> $old" >&2
            echo "install-profile: $use_by_path (or remove the link and rerun)" >&2
        fi
        exit 0
    fi
    ln -sfn "$repo_profile" "$target"
    echo "install-profile: replaced dangling link $target -> $old"
elif [ -e "$target" ]; then
    echo "install-profile: profile '$name' exists and is left as it is: $target (not a link)" >&2
    echo "install-profile: $use_by_path" >&2
    exit 0
else
    ln -s "$repo_profile" "$target"
fi
echo "profile '$name' -> $repo_profile (use: snakemake --profile $name)"
