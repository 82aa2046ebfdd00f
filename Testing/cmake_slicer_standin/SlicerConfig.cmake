# Stand-in for the SlicerConfig.cmake of a Slicer build tree, so that Pantheon's extension can be
# configured, built and installed in tests without building Slicer (Testing/extension_build.py).
#
# Only what a scripted-module extension uses is provided, with the names, signatures and
# file-copying/installing behaviour of the real files (written anew, not copied), read at
# Slicer/Slicer 583e9b37d50ead7daf7b783dce465ccaecec8809 and commontk/CTK 868d56c72d2899f0f5595745c7c39765fed80eef:
#   CMake/SlicerConfig.cmake.in, CMake/SlicerDirectories.cmake   -> this file
#   CMake/UseSlicer.cmake.in                                     -> UseSlicer.cmake
#   CMake/SlicerMacroBuildScriptedModule.cmake                   -> SlicerMacroBuildScriptedModule.cmake
#   CMake/SlicerMacroPythonTesting.cmake                         -> SlicerMacroPythonTesting.cmake
#   CMake/SlicerExtensionGenerateConfig.cmake                    -> SlicerExtensionGenerateConfig.cmake
#   CMake/SlicerExtensionCPack.cmake,
#   Extensions/CMake/SlicerFunctionGenerateExtensionDescription.cmake -> SlicerExtensionCPack.cmake
#   CTK: CMake/ctkMacroCompilePythonScript.cmake                 -> ctkMacroCompilePythonScript.cmake
#
# Use: cmake -DSlicer_DIR=<this folder> -DPYTHON_EXECUTABLE=<python> <extension source>
# Optional: -DSlicer_REQUIRED_PYTHON_VERSION=X.Y.Z (default: the version of PYTHON_EXECUTABLE,
# as for a Slicer built with that Python).

set(Slicer_FOUND TRUE)
set(Slicer_CMAKE_DIR "${CMAKE_CURRENT_LIST_DIR}")
list(APPEND CMAKE_MODULE_PATH "${Slicer_CMAKE_DIR}")

set(Slicer_VERSION_MAJOR 5)
set(Slicer_VERSION_MINOR 10)
set(Slicer_VERSION_PATCH 0)
set(Slicer_VERSION "${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}.${Slicer_VERSION_PATCH}")
set(Slicer_MAIN_PROJECT SlicerApp)
set(Slicer_MAIN_PROJECT_APPLICATION_NAME Slicer)
set(Slicer_REVISION "standin")
set(Slicer_WC_ROOT "https://github.com/Slicer/Slicer")
set(Slicer_OS "linux")
set(Slicer_ARCHITECTURE "amd64")
set(Slicer_ORGANIZATION_NAME "stand-in")
set(Slicer_USE_PYTHONQT ON)
set(Slicer_BUILD_QTSCRIPTEDMODULES ON)
set(Slicer_LICENSE_FILE "${CMAKE_CURRENT_LIST_DIR}/README.md")
set(Slicer_README_FILE "${CMAKE_CURRENT_LIST_DIR}/README.md")

# Tests registered with slicer_add_python_unittest() need the Slicer launcher, which a stand-in
# cannot provide: running them fails rather than passing without having run anything.
set(Slicer_LAUNCHER_EXECUTABLE "${CMAKE_COMMAND};-E;false")

set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionGenerateConfig.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionCPack.cmake")

# Python: the interpreter that byte-compiles the scripts, and the version extensions may check.
if(NOT PYTHON_EXECUTABLE)
  find_package(Python3 REQUIRED COMPONENTS Interpreter)
  set(PYTHON_EXECUTABLE "${Python3_EXECUTABLE}")
endif()
set(PYTHON_EXECUTABLE "${PYTHON_EXECUTABLE}" CACHE FILEPATH "Python used by the Slicer stand-in")
if(NOT Slicer_REQUIRED_PYTHON_VERSION)
  execute_process(
    COMMAND "${PYTHON_EXECUTABLE}" -c "import sys; print('%d.%d.%d' % sys.version_info[:3])"
    OUTPUT_VARIABLE Slicer_REQUIRED_PYTHON_VERSION OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _standin_result)
  if(NOT _standin_result EQUAL 0)
    message(FATAL_ERROR "Slicer stand-in: cannot run PYTHON_EXECUTABLE ${PYTHON_EXECUTABLE}")
  endif()
endif()
if(NOT Slicer_REQUIRED_PYTHON_VERSION MATCHES "^([0-9]+)\\.([0-9]+)\\.([0-9]+)$")
  message(FATAL_ERROR "Slicer_REQUIRED_PYTHON_VERSION [${Slicer_REQUIRED_PYTHON_VERSION}] is not X.Y.Z")
endif()
set(Slicer_REQUIRED_PYTHON_VERSION_MAJOR ${CMAKE_MATCH_1})
set(Slicer_REQUIRED_PYTHON_VERSION_MINOR ${CMAKE_MATCH_2})
set(Slicer_REQUIRED_PYTHON_VERSION_PATCH ${CMAKE_MATCH_3})
set(Slicer_REQUIRED_PYTHON_VERSION_DOT "${CMAKE_MATCH_1}.${CMAKE_MATCH_2}")

# Relative build-tree directories (SlicerDirectories.cmake, Linux layout).
set(Slicer_BIN_DIR "bin")
set(Slicer_LIB_DIR "lib/${Slicer_MAIN_PROJECT_APPLICATION_NAME}-${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}")
set(Slicer_SHARE_DIR "share/${Slicer_MAIN_PROJECT_APPLICATION_NAME}-${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}")
set(Slicer_CLIMODULES_SUBDIR "cli-modules")
set(Slicer_CLIMODULES_BIN_DIR "${Slicer_LIB_DIR}/${Slicer_CLIMODULES_SUBDIR}")
set(Slicer_CLIMODULES_LIB_DIR "${Slicer_LIB_DIR}/${Slicer_CLIMODULES_SUBDIR}")
set(Slicer_CLIMODULES_SHARE_DIR "${Slicer_SHARE_DIR}/${Slicer_CLIMODULES_SUBDIR}")
set(Slicer_QTLOADABLEMODULES_SUBDIR "qt-loadable-modules")
set(Slicer_QTLOADABLEMODULES_BIN_DIR "${Slicer_LIB_DIR}/${Slicer_QTLOADABLEMODULES_SUBDIR}")
set(Slicer_QTLOADABLEMODULES_LIB_DIR "${Slicer_LIB_DIR}/${Slicer_QTLOADABLEMODULES_SUBDIR}")
set(Slicer_QTLOADABLEMODULES_SHARE_DIR "${Slicer_SHARE_DIR}/${Slicer_QTLOADABLEMODULES_SUBDIR}")
set(Slicer_QTSCRIPTEDMODULES_SUBDIR "qt-scripted-modules")
set(Slicer_QTSCRIPTEDMODULES_BIN_DIR "${Slicer_LIB_DIR}/${Slicer_QTSCRIPTEDMODULES_SUBDIR}")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_LIB_DIR}/${Slicer_QTSCRIPTEDMODULES_SUBDIR}")
set(Slicer_QTSCRIPTEDMODULES_SHARE_DIR "${Slicer_SHARE_DIR}/${Slicer_QTSCRIPTEDMODULES_SUBDIR}")

# Install-tree directories of Slicer itself; UseSlicer.cmake redefines the module ones for an
# extension, as the real file does.
set(Slicer_INSTALL_ROOT "./")
set(Slicer_INSTALL_BIN_DIR "${Slicer_INSTALL_ROOT}${Slicer_BIN_DIR}")
set(Slicer_INSTALL_LIB_DIR "${Slicer_INSTALL_ROOT}${Slicer_LIB_DIR}")
set(Slicer_INSTALL_SHARE_DIR "${Slicer_INSTALL_ROOT}${Slicer_SHARE_DIR}")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_INSTALL_ROOT}${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
