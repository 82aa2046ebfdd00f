# Stand-in for Slicer's CMake/SlicerMacroPythonTesting.cmake (see SlicerConfig.cmake).
#
# Behaviour kept: slicer_add_python_test(SCRIPT ... [TESTNAME_PREFIX] [SLICER_ARGS] [SCRIPT_ARGS])
# and slicer_add_python_unittest(SCRIPT ... [TESTNAME_PREFIX] [SLICER_ARGS]) register the ctest
# py_<prefix><script name without extension>, run serially through ${Slicer_LAUNCHER_EXECUTABLE}
# with --no-splash --testing and, in an extension build, --additional-module-paths pointing at
# the extension's module folders. The unittest variant runs slicer.testing.runUnitTest on the
# current binary folder and the script's folder. Real Slicer adds them with ExternalData_add_test;
# plain add_test is enough here.

function(_slicer_standin_append_module_paths arguments_var)
  if(DEFINED Slicer_SOURCE_DIR OR "--disable-modules" IN_LIST ${arguments_var})
    return()
  endif()
  set(paths)
  if(NOT "--disable-scripted-loadable-modules" IN_LIST ${arguments_var})
    list(APPEND paths ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR})
  endif()
  if(NOT "--disable-cli-modules" IN_LIST ${arguments_var})
    list(APPEND paths ${CMAKE_BINARY_DIR}/${Slicer_CLIMODULES_LIB_DIR})
  endif()
  if(NOT "--disable-loadable-modules" IN_LIST ${arguments_var})
    list(APPEND paths ${CMAKE_BINARY_DIR}/${Slicer_QTLOADABLEMODULES_LIB_DIR})
  endif()
  if(paths)
    set(${arguments_var} ${${arguments_var}} --additional-module-paths ${paths} PARENT_SCOPE)
  endif()
endfunction()

macro(slicer_add_python_test)
  cmake_parse_arguments(MY "" "TESTNAME_PREFIX;SCRIPT" "SLICER_ARGS;SCRIPT_ARGS" ${ARGN})
  get_filename_component(_standin_test_name ${MY_SCRIPT} NAME_WE)
  if(NOT IS_ABSOLUTE ${MY_SCRIPT})
    set(MY_SCRIPT "${CMAKE_CURRENT_SOURCE_DIR}/${MY_SCRIPT}")
  endif()
  _slicer_standin_append_module_paths(MY_SLICER_ARGS)
  add_test(
    NAME py_${MY_TESTNAME_PREFIX}${_standin_test_name}
    COMMAND ${Slicer_LAUNCHER_EXECUTABLE} --no-splash --testing ${MY_SLICER_ARGS}
            --python-script ${MY_SCRIPT} ${MY_SCRIPT_ARGS})
  set_property(TEST py_${MY_TESTNAME_PREFIX}${_standin_test_name} PROPERTY RUN_SERIAL TRUE)
endmacro()

macro(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "TESTNAME_PREFIX;SCRIPT" "SLICER_ARGS" ${ARGN})
  get_filename_component(_standin_test_name ${MY_SCRIPT} NAME_WE)
  get_filename_component(_standin_script_dir ${MY_SCRIPT} PATH)
  if("${_standin_script_dir}" STREQUAL "")
    set(_standin_script_dir ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  _slicer_standin_append_module_paths(MY_SLICER_ARGS)
  add_test(
    NAME py_${MY_TESTNAME_PREFIX}${_standin_test_name}
    COMMAND ${Slicer_LAUNCHER_EXECUTABLE} --no-splash --testing ${MY_SLICER_ARGS}
            --python-code "import slicer.testing\\; slicer.testing.runUnitTest(['${CMAKE_CURRENT_BINARY_DIR}', '${_standin_script_dir}'], '${_standin_test_name}')")
  set_property(TEST py_${MY_TESTNAME_PREFIX}${_standin_test_name} PROPERTY RUN_SERIAL TRUE)
endmacro()
