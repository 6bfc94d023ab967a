package clientapi

import "github.com/gorilla/mux"

func (a *API) directoryRoutes(r *mux.Router) {}
