# Stand-in for CTK's CMake/ctkMacroCompilePythonScript.cmake (see SlicerConfig.cmake).
#
# Behaviour kept from the real macro:
# - keywords TARGET_NAME SCRIPTS RESOURCES SOURCE_DIR DESTINATION_DIR INSTALL_DIR (values) and
#   NO_INSTALL_SUBDIR GLOBAL_TARGET (flags); TARGET_NAME, SCRIPTS, DESTINATION_DIR and INSTALL_DIR
#   are mandatory; SOURCE_DIR defaults to the current source directory;
# - a script without a ".py" extension gets one; relative scripts and resources are copied at build
#   time from SOURCE_DIR/<file> to DESTINATION_DIR/<file> (targets Copy<T>PythonScriptFiles and
#   Copy<T>PythonResourceFiles), then the copied scripts are byte-compiled next to themselves
#   (<file>.pyc, target Compile<T>PythonFiles; a file that does not compile is reported, not fatal);
# - install() takes the whole DESTINATION_DIR build folder, not the listed files: anything copied
#   there is installed and anything not listed is missing. With NO_INSTALL_SUBDIR its content
#   goes into INSTALL_DIR, otherwise the folder itself goes into INSTALL_DIR.
# Not supported: GLOBAL_TARGET / CTK_COMPILE_PYTHON_SCRIPTS_GLOBAL_TARGET_NAME (Slicer sets it for
# its own build only, never for an extension).

macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY
    "NO_INSTALL_SUBDIR;GLOBAL_TARGET"
    "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR"
    "SCRIPTS;RESOURCES"
    ${ARGN})
  foreach(_standin_var TARGET_NAME SCRIPTS DESTINATION_DIR INSTALL_DIR)
    if(NOT DEFINED MY_${_standin_var})
      message(FATAL_ERROR "${_standin_var} is mandatory")
    endif()
  endforeach()
  if(MY_GLOBAL_TARGET OR NOT "${CTK_COMPILE_PYTHON_SCRIPTS_GLOBAL_TARGET_NAME}" STREQUAL "")
    message(FATAL_ERROR "ctkMacroCompilePythonScript stand-in: GLOBAL_TARGET is not supported")
  endif()
  if(NOT DEFINED MY_SOURCE_DIR)
    set(MY_SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  get_filename_component(MY_SOURCE_DIR ${MY_SOURCE_DIR} REALPATH)
  get_filename_component(MY_DESTINATION_DIR ${MY_DESTINATION_DIR} REALPATH)

  set(_standin_copied_scripts)
  foreach(_standin_file IN LISTS MY_SCRIPTS)
    get_filename_component(_standin_ext ${_standin_file} EXT)
    if(NOT "${_standin_ext}" MATCHES "py")
      set(_standin_file "${_standin_file}.py")
    endif()
    if(IS_ABSOLUTE ${_standin_file})
      set(_standin_src ${_standin_file})
      file(RELATIVE_PATH _standin_rel ${CMAKE_CURRENT_BINARY_DIR} ${_standin_file})
    else()
      set(_standin_src ${MY_SOURCE_DIR}/${_standin_file})
      set(_standin_rel ${_standin_file})
    endif()
    list(APPEND _standin_copied_scripts ${MY_DESTINATION_DIR}/${_standin_rel})
    _ctk_standin_copy(${_standin_src} ${MY_DESTINATION_DIR}/${_standin_rel} "script")
  endforeach()

  set(_standin_copied_resources)
  foreach(_standin_file IN LISTS MY_RESOURCES)
    if(IS_ABSOLUTE ${_standin_file})
      set(_standin_src ${_standin_file})
    else()
      set(_standin_src ${MY_SOURCE_DIR}/${_standin_file})
    endif()
    list(APPEND _standin_copied_resources ${MY_DESTINATION_DIR}/${_standin_file})
    _ctk_standin_copy(${_standin_src} ${MY_DESTINATION_DIR}/${_standin_file} "resource")
  endforeach()

  add_custom_target(Copy${MY_TARGET_NAME}PythonScriptFiles ALL DEPENDS ${_standin_copied_scripts})
  if(_standin_copied_resources)
    add_custom_target(Copy${MY_TARGET_NAME}PythonResourceFiles ALL DEPENDS ${_standin_copied_resources})
  endif()

  # Byte-compile the copied scripts with the Slicer Python (PYTHON_EXECUTABLE).
  set(_standin_list ${CMAKE_CURRENT_BINARY_DIR}/compile_${MY_TARGET_NAME}_python_scripts.txt)
  string(REPLACE ";" "\n" _standin_lines "${_standin_copied_scripts}")
  file(WRITE ${_standin_list} "${_standin_lines}\n")
  set(_standin_stamp ${CMAKE_CURRENT_BINARY_DIR}/python_compile_${MY_TARGET_NAME}_complete)
  add_custom_command(
    OUTPUT ${_standin_stamp}
    COMMAND ${PYTHON_EXECUTABLE} ${Slicer_CMAKE_DIR}/compile_python_scripts.py ${_standin_list} ${_standin_stamp}
    DEPENDS Copy${MY_TARGET_NAME}PythonScriptFiles ${_standin_list} ${_standin_copied_scripts}
    COMMENT "Compiling python scripts: ${MY_TARGET_NAME}")
  add_custom_target(Compile${MY_TARGET_NAME}PythonFiles ALL DEPENDS ${_standin_stamp})

  set(_standin_install_from ${MY_DESTINATION_DIR})
  if(MY_NO_INSTALL_SUBDIR)
    set(_standin_install_from ${MY_DESTINATION_DIR}/)
  endif()
  install(DIRECTORY "${_standin_install_from}"
    DESTINATION "${MY_INSTALL_DIR}" COMPONENT RuntimeLibraries
    USE_SOURCE_PERMISSIONS)
endmacro()

function(_ctk_standin_copy src dest kind)
  add_custom_command(
    OUTPUT ${dest}
    COMMAND ${CMAKE_COMMAND} -E copy ${src} ${dest}
    DEPENDS ${src}
    COMMENT "Copying python ${kind}: ${dest}")
endfunction()
