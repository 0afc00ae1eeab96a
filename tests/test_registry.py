import attrs
import pytest

from ttt_core.errors import RegistryError
from ttt_core.registry import Provider, ProviderRegistry, Registry


@attrs.define
class Cfg:
    size: int = 1


def factory(config, **context):
    return ("built", config.size, context)


def other_factory(config, **context):
    return None


def view(registry, plugin="p1", dist="dist-one"):
    return ProviderRegistry(registry=registry, provider=Provider(plugin, dist, "1.0"))


def test_add_get_and_build():
    registry = Registry()
    view(registry).add("recurrence", "loop", config=Cfg, factory=factory, aliases=["lp"], description="d")
    component = registry["recurrence"].get("lp")
    assert component.name == "loop" and component.description == "d"
    assert component.build(Cfg(size=3), x=1) == ("built", 3, {"x": 1})


def test_same_object_twice_is_a_no_op():
    registry = Registry()
    view(registry).add("task", "t", config=Cfg, factory=factory)
    view(registry).add("task", "t", config=Cfg, factory=factory)
    assert registry["task"].names() == ["t"]


def test_duplicate_names_both_providers():
    registry = Registry()
    view(registry).add("task", "t", config=Cfg, factory=factory)
    with pytest.raises(RegistryError) as info:
        view(registry, "p2", "dist-two").add("task", "t", config=Cfg, factory=other_factory)
    assert str(info.value) == (
        "task 't' is registered twice: by dist-one 1.0 (plugin 'p1') and by dist-two 1.0 (plugin 'p2')"
    )


def test_alias_clash():
    registry = Registry()
    view(registry).add("task", "t", config=Cfg, factory=factory)
    with pytest.raises(RegistryError, match="alias 't' of 'u'.*clashes with 't'"):
        view(registry, "p2", "dist-two").add("task", "u", config=Cfg, factory=factory, aliases=["t"])


def test_config_must_be_attrs():
    with pytest.raises(RegistryError, match="config must be an attrs class"):
        view(Registry()).add("task", "t", config=dict, factory=factory)


def test_unknown_names():
    registry = Registry()
    view(registry).add("recurrence", "single", config=Cfg, factory=factory)
    with pytest.raises(RegistryError) as info:
        registry["recurrence"].get("singel")
    assert str(info.value) == "unknown recurrence 'singel' (did you mean 'single'?); available: single"
    with pytest.raises(RegistryError) as info:
        registry["recurrence"].get("prmt4")
    assert str(info.value) == (
        "unknown recurrence 'prmt4': it is provided by ttt-plugin-rmt (pip install ttt-plugin-rmt)"
    )
    with pytest.raises(RegistryError) as info:
        registry["recurrence"].get("prmt4", broken={"ttt-plugin-rmt": "ImportError: no module named x"})
    assert str(info.value) == "recurrence 'prmt4' comes from ttt-plugin-rmt, which failed to load: ImportError: no module named x"
    with pytest.raises(RegistryError, match="unknown component kind 'recurence' \\(did you mean 'recurrence'\\?\\)"):
        registry["recurence"]


def test_string_factory_imported_lazily():
    registry = Registry()
    view(registry).add("task", "t", config=Cfg, factory="json:dumps")
    assert registry["task"].get("t").resolve_factory().__name__ == "dumps"
    view(registry).add("task", "bad", config=Cfg, factory="no_such_module_xyz:f")
    with pytest.raises(RegistryError, match="cannot import factory 'no_such_module_xyz:f'"):
        registry["task"].get("bad").resolve_factory()
