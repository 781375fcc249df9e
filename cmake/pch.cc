// Empty translation unit: the owner of a precompiled header that the library
// and test targets reuse (CMakeLists.txt, CKPT_PCH).
