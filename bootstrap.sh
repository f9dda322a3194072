#!/usr/bin/env bash
# Sets up the toolkit's one virtual environment, then runs the main job or the test suite.
#
# Usage: bash bootstrap.sh demo [--out DIR]   set up, then run every tool on generated sample episodes (default DIR: demo_output)
#        bash bootstrap.sh test [PYTEST ARGS]  set up, then run the whole test suite
#        bash bootstrap.sh env                 only set up (.venv, or $TOOLKIT_VENV)
#        bash bootstrap.sh lerobot-v3          only set up .venv-lerobot04 (lerobot 0.4.4, for --format v3.0; test builds it too)
#
# The environment is rebuilt only when requirements.lock or requirements-nodeps.lock changed since the last
# complete install, so a second call costs a second.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly ROOT
readonly VENV="${TOOLKIT_VENV:-${ROOT}/.venv}"
readonly V3_VENV="${ROOT}/.venv-lerobot04"

err() {
  echo "bootstrap.sh: $*" >&2
}

find_python() {
  local candidate
  for candidate in python3.11 python3; do
    if command -v "${candidate}" >/dev/null \
      && "${candidate}" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "${candidate}"
      return
    fi
  done
  err "Python 3.11 is required (openpi and the pinned wheels need it); none found on PATH"
  exit 1
}

fail_install() {
  err "$2; the environment in $1 is incomplete and will be installed again on the next run"
  exit 1
}

# install_env VENV WHAT [--no-deps] LOCK...: pip-installs the locks (paths under ROOT, in order; --no-deps applies to
# the lock after it) into VENV, creating it if needed, unless VENV's stamp holds the hash of exactly these locks.
install_env() {
  local venv="$1" what="$2"
  shift 2
  local stamp="${venv}/.toolkit-requirements.sha256" locks=() arg
  for arg in "$@"; do
    [[ "${arg}" == --no-deps ]] || locks+=("${ROOT}/${arg}")
  done
  local want
  want="$(cat "${locks[@]}" | sha256sum | cut -d' ' -f1)"
  if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${want}" ]]; then
    return
  fi
  echo "bootstrap.sh: installing ${what} into ${venv} (a few minutes the first time)"
  local started=${SECONDS}
  if [[ ! -x "${venv}/bin/python" ]]; then
    local python
    python="$(find_python)" || exit 1
    "${python}" -m venv "${venv}" || fail_install "${venv}" "could not create the virtual environment"
  fi
  # Every step is checked by hand: main calls this function in a context where bash ignores `set -e`, and a stamp
  # written after a failed step would make every later run skip the install and use a broken environment.
  rm -f "${stamp}"
  local no_deps=()
  for arg in "$@"; do
    if [[ "${arg}" == --no-deps ]]; then
      no_deps=(--no-deps)
      continue
    fi
    "${venv}/bin/pip" install --quiet --disable-pip-version-check "${no_deps[@]}" -r "${ROOT}/${arg}" \
      || fail_install "${venv}" "pip could not install ${arg}"
    no_deps=()
  done
  echo "${want}" >"${stamp}"
  echo "bootstrap.sh: ${venv} ready in $((SECONDS - started)) s, $(du -sh "${venv}" | cut -f1)"
}

ensure_env() {
  # openpi's own metadata pins CUDA jax and torch 2.7.1; everything it imports is already in requirements.lock.
  install_env "${VENV}" "the pinned environment" requirements.lock --no-deps requirements-nodeps.lock
}

ensure_v3_env() {
  # A second environment only for the converter's --format v3.0: lerobot 0.4.4 writes and reads LeRobot v3.0 only,
  # and its pins (datasets 4, numpy via XPolicyLab's lock) cannot share .venv with openpi's lerobot. --no-deps: the
  # lock lists exactly what lerobot's dataset code imports, not its robot/training extras (wandb, rerun, diffusers).
  install_env "${V3_VENV}" "lerobot 0.4.4 for --format v3.0" --no-deps requirements-lerobot-v3.lock
}

ensure_tmux() {
  # The monitor's tests drive a real terminal through tmux.
  if command -v tmux >/dev/null; then
    return
  fi
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq tmux >/dev/null
  elif [[ "${TOOLKIT_STRICT:-}" == 1 ]]; then
    err "tmux is not installed and TOOLKIT_STRICT=1 runs every test: install it with your package manager"
    exit 1
  else
    err "tmux is not installed; the terminal tests will be skipped (install it with your package manager)"
  fi
}

run_demo() {
  local out="${ROOT}/demo_output"
  if [[ "${1:-}" == "--out" ]]; then
    out="$(realpath -m "${2:?--out needs a folder}")"
  fi
  local python="${VENV}/bin/python"
  local samples="${out}/samples/place_dual_shoes/demo_clean"
  local started=${SECONDS}

  echo "== 1/4 sample episodes"
  "${python}" "${ROOT}/generate_robotwin_samples.py" --out "${out}/samples" --episodes 4

  echo "== 2/4 camera videos"
  "${python}" "${ROOT}/visualize_hdf5_cameras.py" --root "${samples}/data" --out "${out}/videos" --overwrite
  # The labels the converter will compute, seen before any training: one episode with the progress strip.
  "${python}" "${ROOT}/visualize_hdf5_cameras.py" --root "${samples}/data" --out "${out}/videos_progress" \
    --episodes 0 --progress --overwrite

  echo "== 3/4 GPU monitor snapshot"
  if ! "${python}" "${ROOT}/gpumon.py" --once; then
    # No driver here: show what the monitor draws for a simulated GPU (the tests' fake NVML).
    echo "(a simulated GPU from tests/fake_nvml, since this machine has no NVIDIA driver)"
    PYTHONPATH="${ROOT}/tests/fake_nvml" FAKE_NVML_SCENARIO=one COLUMNS=120 LINES=24 \
      "${python}" "${ROOT}/gpumon.py" --once
  fi

  echo "== 4/4 conversion to LeRobot and the four progress experiments on the CPU"
  # --reconvert --force: a second demo repeats every stage rather than skipping what finished before. --heldout 2:
  # one held-out episode gives nothing to resample, two give an interval (a wide one).
  PYTHON="${python}" bash "${ROOT}/run_experiments.sh" --demo --out "${out}" --root "${samples}" --heldout 2 --reconvert --force

  echo "demo: sample episodes in ${samples}"
  echo "demo: camera videos in ${out}/videos (open ${out}/videos/index.html)"
  echo "demo: episode 0 with its progress labels in ${out}/videos_progress/episode0.mp4"
  echo "demo: LeRobot dataset, training logs and checkpoints under ${out} (see run_experiments.sh's summary above)"
  echo "demo: held-out evaluation in ${out}/evaluation (results.md, progress.png)"
  echo "demo: finished in $((SECONDS - started)) s"
}

run_tests() {
  ensure_tmux
  local status=0
  (cd "${ROOT}" && "${VENV}/bin/python" -m pytest "$@") || status=$?
  if ((status == 5)); then
    echo "bootstrap.sh: pytest collected no tests"
    status=0
  fi
  return "${status}"
}

main() {
  local command="${1:-}"
  shift || true
  case "${command}" in
    demo)
      ensure_env
      run_demo "$@"
      ;;
    test)
      ensure_env
      ensure_v3_env
      run_tests "$@"
      ;;
    env) ensure_env ;;
    lerobot-v3) ensure_v3_env ;;
    *)
      sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
      exit 2
      ;;
  esac
}

main "$@"
