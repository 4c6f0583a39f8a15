//! The generated WIT bindings, confined to this module; the rest of the host uses the items
//! re-exported from [`crate::runtime`].

wasmtime::component::bindgen!({
    path: "../wit",
    world: "task-plugin",
    imports: { default: async | trappable },
    exports: { default: async },
});
