/* The ABI version of the library: cpu/library.py declares every exported function's signature for
 * this version and refuses a build of another one. Bump it with any change of an exported
 * function's name, arguments or meaning. */
int ps_abi_version(void) { return 1; }
