"""Environments as pure functions (:class:`Env`): gymnax (classic control, MinAtar), brax, Atari,
and the multi-agent games written here (matrix games, predator-prey).

``make_env(name)`` picks the adapter from the name: gymnax names as gymnax spells them
(``"CartPole-v1"``, ``"Breakout-MinAtar"``), brax tasks as ``"brax/<task>"`` (``"brax/hopper"``),
Atari 2600 games as ``"atari/<rom id>"`` (``"atari/breakout"``; needs ale-py); multi-agent:
``"matrix-sequential"`` (the five sequential matrix games, one task each), ``"matrix/<game>"``
(one game of :data:`~plastix.envs.matrix_games.GAMES`), ``"predator-prey"``, and SMAX (jaxmarl):
``"smax-drift"`` (5-unit SMACv2-style battles, unit-type mix drifting over 5 tasks),
``"smax-sequential"`` (5 fixed compositions), ``"smax/<map>"`` (e.g. ``"smax/3s_vs_5z"``) and
``"mpe/simple_spread"`` (jaxmarl's MPE, a quick cooperative sanity task).
"""

from __future__ import annotations

from plastix.envs.base import Env, EnvSpec, Timestep
from plastix.envs.gymnax_envs import MINATAR, make_gymnax
from plastix.envs.gymnax_envs import NAMES as GYMNAX_NAMES

MULTI_AGENT = (
    "matrix-sequential",
    "predator-prey",
    "smax-drift",
    "smax-sequential",
    "smax/3s_vs_5z",
    "mpe/simple_spread",
)


def available_envs() -> tuple[str, ...]:
    """Every name :func:`make_env` accepts."""
    from plastix.envs.atari import available_games
    from plastix.envs.brax_envs import NAMES as BRAX_NAMES
    from plastix.envs.matrix_games import GAMES

    return (
        GYMNAX_NAMES
        + MULTI_AGENT
        + tuple(f"matrix/{g}" for g in GAMES)
        + tuple(f"brax/{n}" for n in BRAX_NAMES)
        + tuple(f"atari/{g}" for g in available_games())
    )


def make_env(name: str, evaluation: bool = False, **kwargs) -> Env:
    """The environment called ``name`` (see :func:`available_envs`).

    Args:
      name: environment name.
      evaluation: the variant for evaluation episodes (Atari: raw, unclipped game scores; the same
        env otherwise).
      kwargs: adapter options (see ``make_gymnax``, ``make_brax``, ``make_atari``).

    Raises:
      ValueError: for an unknown name, listing the available ones.
    """
    if name in GYMNAX_NAMES:
        return make_gymnax(name, **kwargs)
    if name == "matrix-sequential" or name.startswith("matrix/"):
        from plastix.envs.matrix_games import GAMES, SEQUENTIAL_GAMES, make_matrix_game

        game = name[len("matrix/") :] if name.startswith("matrix/") else None
        if game is not None and game not in GAMES:
            raise ValueError(f"env: got {name!r}, matrix games available: {tuple(f'matrix/{g}' for g in GAMES)}")
        return make_matrix_game(SEQUENTIAL_GAMES if game is None else GAMES[game], name=name, **kwargs)
    if name in ("smax-drift", "smax-sequential") or name.startswith("smax/"):
        from plastix.envs.smax import SEQUENTIAL_COMPOSITIONS, drift_mixes, make_smax

        if name == "smax-drift":
            return make_smax("smacv2_5_units", drift_mixes(5), name=name, **kwargs)
        if name == "smax-sequential":
            return make_smax("smacv2_5_units", SEQUENTIAL_COMPOSITIONS, name=name, **kwargs)
        return make_smax(name[len("smax/") :], name=name, **kwargs)
    if name == "mpe/simple_spread":
        from plastix.envs.mpe import make_mpe

        return make_mpe("MPE_simple_spread_v3", name=name, **kwargs)
    if name == "predator-prey":
        from plastix.envs.predator_prey import make_predator_prey

        return make_predator_prey(name=name, **kwargs)
    if name.startswith("brax/"):
        from plastix.envs.brax_envs import make_brax

        try:
            return make_brax(name[len("brax/") :], **kwargs)
        except ModuleNotFoundError as e:
            raise ValueError(
                f'env {name!r} needs brax, which is not installed ({e.name} missing): pip install -e ".[brax]"'
            ) from None
    if name.startswith("atari/"):
        from plastix.envs.atari import make_atari

        return make_atari(name[len("atari/") :], evaluation=evaluation, **kwargs)
    raise ValueError(unknown_name("env", name, available_envs()))


def unknown_name(field: str, name: str, choices: tuple[str, ...]) -> str:
    """The error text for ``name`` not among ``choices``: the closest names first, then the
    choices (Atari's ROMs as one entry with a count, not a hundred names)."""
    import difflib

    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    roms = [c for c in choices if c.startswith("atari/")]
    listed = [c for c in choices if not c.startswith("atari/")]
    if roms:
        listed.append(f"atari/<game> for ale-py's {len(roms)} ROMs, e.g. {', '.join(roms[:3])}")
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return f"{field}: got {name!r}{hint}; available: {', '.join(listed)}"


__all__ = ["Env", "EnvSpec", "Timestep", "make_env", "available_envs", "MINATAR"]
